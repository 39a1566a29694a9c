package e2e

import (
	"bufio"
	"net/textproto"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

// maildirHeaders returns, per Message-ID in a Maildir, the values of the
// header name in that message.
func maildirHeaders(t testing.TB, dir, name string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			f, err := os.Open(filepath.Join(dir, sub, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			h, err := textproto.NewReader(bufio.NewReader(f)).ReadMIMEHeader()
			f.Close()
			if err != nil && len(h) == 0 {
				t.Fatalf("%s: %v", e.Name(), err)
			}
			vals := append([]string(nil), h.Values(name)...)
			sort.Strings(vals)
			out[h.Get("Message-Id")] = vals
		}
	}
	return out
}

// TestTagHeaders: limits in tag mode refuse nothing, and every delivered
// message of a session they would have refused carries one header per
// limit, added by the real MTA on sessioncap's request.
func TestTagHeaders(t *testing.T) {
	forEachMTA(t, func(t *testing.T, kind string) {
		e := newEnv(t, kind, `
mode = "enforce"
[tag]
header = "X-Sessioncap-Test"
[session]
max_messages = 1
mode = "tag"
[frequency]
max_connections = 1
window = "1h"
ban = "0s"
mode = "tag"
`)
		want := map[string][]string{}
		sendOne := func(c *smtpClient, tag string, headers ...string) {
			t.Helper()
			data, id := newMessage(tag, 2000)
			res := c.send(message{from: "sender@client.test", rcpts: []string{"rcpt@" + sinkDomain}, data: data})
			if !res.accepted {
				t.Fatalf("%s: not accepted: stopped at %s, MAIL %v, RCPT %v, end of data %v", tag, res.stage, res.mail, res.rcpts, res.eom)
			}
			e.want[id] = 1
			want[id] = headers
		}
		c := e.dial(t, "first")
		sendOne(c, "tag-1")
		sendOne(c, "tag-2", "limit=session_messages value=1 cap=1")
		c.quit()
		c2 := e.dial(t, "second") // over the frequency cap: every message is tagged
		sendOne(c2, "tag-3", "limit=frequency value=2 cap=1")
		sendOne(c2, "tag-4", "limit=frequency value=2 cap=1", "limit=session_messages value=1 cap=1")
		c2.quit()
		e.delivered(t)
		got := maildirHeaders(t, e.m.mailDir(), "X-Sessioncap-Test")
		for id, w := range want {
			if !reflect.DeepEqual(got[id], w) && !(len(w) == 0 && len(got[id]) == 0) {
				t.Errorf("%s: X-Sessioncap-Test %q, want %q", id, got[id], w)
			}
		}
		e.expectRefusals(t, "session_messages", "mail", "tag", 2)
		e.expectRefusals(t, "frequency", "connect", "tag", 1)
		if n := e.d.metrics(t)["sessioncap_tag_headers_total"]; n != 4 {
			t.Errorf("sessioncap_tag_headers_total = %v, want 4", n)
		}
	})
}
