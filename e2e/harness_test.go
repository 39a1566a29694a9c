package e2e

import (
	"errors"
	"fmt"
	"net"
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

// TestPortTakenIsDetected checks the harness's defence against freePort's
// race: when another process holds the port picked for an instance,
// starting it reports errPortTaken (so startOnFreePort tries another port)
// instead of talking to the other process.
func TestPortTakenIsDetected(t *testing.T) {
	requireSessioncap(t)
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// The other process greets like an SMTP server, but is not ours.
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("220 someone.else ESMTP\r\n"))
			c.Close()
		}
	}()
	port := other.Addr().(*net.TCPAddr).Port

	t.Run("sessioncap", func(t *testing.T) {
		if _, err := tryStartSessioncap(t, port, ""); !errors.Is(err, errPortTaken) {
			t.Fatalf("sessioncap on a taken port: %v, want errPortTaken", err)
		}
	})
	t.Run("postfix", func(t *testing.T) {
		requirePostfix(t)
		if _, err := tryStartPostfix(t, "taken", postfixConfig{}, port); !errors.Is(err, errPortTaken) {
			t.Fatalf("postfix on a taken port: %v, want errPortTaken", err)
		}
	})
	t.Run("sendmail", func(t *testing.T) {
		requireSendmail(t)
		if _, err := tryStartSendmail(t, "taken", 0, port, nil); !errors.Is(err, errPortTaken) {
			t.Fatalf("sendmail on a taken port: %v, want errPortTaken", err)
		}
	})
}
