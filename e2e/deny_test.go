package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestDenyList: a client in [deny] networks (all of loopback here) gets a
// 554 greeting from both MTAs and sends nothing. Both MTAs give their own
// text at connect; sessioncap's reply is in their logs.
func TestDenyList(t *testing.T) {
	forEachMTA(t, func(t *testing.T, kind string) {
		e := newEnv(t, kind, "[deny]\nnetworks = [\"127.0.0.0/8\"]\n")
		c := dialSMTP(t, kind+" denied", e.m.smtpAddr())
		mtaText := map[string]string{"postfix": "not accepting connections", "sendmail": "not accepting messages"}[kind]
		expectReply(t, "greeting of a denied client", c.greeting, 554, mtaText)
		c.quit()
		err := waitFor(5*time.Second, func() error {
			if !strings.Contains(e.m.log(), "5.7.1 Access denied") {
				return fmt.Errorf("%w: sessioncap's reply not in the %s log", errNotYet, kind)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		e.expectRefusals(t, "deny", "connect", "enforce", 1)
	})
}
