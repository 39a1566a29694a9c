package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestHarnessDelivery checks the harness itself, without sessioncap: several
// messages over one connection, with and without SIZE=, each delivered to
// the Maildir exactly once.
func TestHarnessDelivery(t *testing.T) {
	for _, kind := range mtaKinds {
		t.Run(kind, func(t *testing.T) {
			m := startMTA(t, kind, 0)
			c := dialSMTP(t, kind, m.smtpAddr())
			if c.greeting.code != 220 {
				t.Fatalf("greeting %v, want 220", c.greeting)
			}
			if r := c.ehlo("client.test"); r.code != 250 {
				t.Fatalf("EHLO: %v", r)
			}
			if _, ok := c.ext["SIZE"]; !ok {
				t.Errorf("%s does not advertise SIZE: %v", kind, c.ext)
			}
			want := map[string]int{}
			for i := 0; i < 4; i++ {
				data, id := newMessage("harness", 2000+i*10000)
				msg := message{from: "sender@client.test", rcpts: []string{fmt.Sprintf("r%d@%s", i, sinkDomain)}, data: data}
				if i%2 == 1 {
					msg.size = len(data)
				}
				res := c.send(msg)
				if !res.accepted {
					t.Fatalf("message %d: %+v", i, res)
				}
				want[id] = 1
			}
			c.quit()
			assertDelivered(t, m, want, 20*time.Second)
		})
	}
}
