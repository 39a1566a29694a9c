package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sessioncap/sessioncap/internal/redistest"
)

// When Redis dies, the first store call that fails opens the breaker: the
// outage is logged once, the later connects do not wait for Redis again,
// and under on_error = "tempfail" every connect is refused with 421 until
// Redis is back. The engine bounds every store call by store.timeout and
// so does the breaker; a failure at that shared deadline is Redis's, not
// the caller's (it used to leave the breaker closed: each connect waited
// the timeout and was let through, also under tempfail).
func TestRedisOutageOpensTheBreakerOnce(t *testing.T) {
	for _, onError := range []string{"local", "tempfail"} {
		t.Run(onError, func(t *testing.T) {
			rds := redistest.Standalone(t)
			d := startDaemon(t, fmt.Sprintf("[frequency]\nmax_connections = 1000\nwindow = \"1h\"\nban = \"1h\"\n"+
				"[store]\nbackend = \"redis\"\ntimeout = \"100ms\"\non_error = %q\n[store.redis]\naddresses = [%q]\n", onError, rds.Addr()))
			if s, act := d.connectFrom("192.0.2.1"); act.StopProcessing() {
				t.Fatalf("refused while Redis is up: %v", act)
			} else {
				s.Close()
			}
			rds.Kill()
			const n = 20
			refused := 0
			for i := 0; i < n; i++ { // no scrape in between: connects alone must open the breaker
				s, act := d.connectFrom(fmt.Sprintf("198.51.100.%d", i))
				if act.StopProcessing() {
					if act.SMTPCode != 421 {
						t.Fatalf("connect %d: %v, want 421 or accepted", i+1, act)
					}
					refused++
				}
				s.Close()
			}
			switch onError {
			case "local":
				if refused != 0 {
					t.Fatalf("%d of %d connects refused with on_error = local", refused, n)
				}
			case "tempfail":
				if refused != n {
					t.Fatalf("%d of %d connects refused with on_error = tempfail, want all", refused, n)
				}
			}
			if got := d.metric(`sessioncap_store_duration_seconds_count{op="hit",result="error"}`); got != "1" {
				t.Fatalf("%s hits failed against the dead Redis, want 1: the breaker did not open at the first failure", got)
			}
			if got := d.metric("sessioncap_store_up"); got != "0" {
				t.Fatalf("sessioncap_store_up = %s", got)
			}
			logs := d.logs()
			if c := strings.Count(logs, "shared store down"); c != 1 {
				t.Fatalf("%d outage lines, want 1:\n%s", c, logs)
			}
			if c := strings.Count(logs, "store call failed"); c != 0 {
				t.Fatalf("%d per-connection store error lines, want none:\n%s", c, logs)
			}
		})
	}
}
