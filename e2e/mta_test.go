package e2e

import (
	"testing"
)

// mta is a private receiving MTA that delivers sink.test to a Maildir.
type mta interface {
	mtaName() string
	smtpAddr() string
	mailDir() string
	log() string
	// queueEmpty reports whether the MTA holds no message any more (all
	// delivered or given up), and if not, what is left.
	queueEmpty() (bool, string)
	// stop shuts the instance down (its t.Cleanup does so too).
	stop(t testing.TB)
}

// mtaKinds are the receiving MTAs every end-to-end test runs against.
var mtaKinds = []string{"postfix", "sendmail"}

// startMTA starts a receiving MTA of the given kind; milterPort 0 means no
// milter.
func startMTA(t testing.TB, kind string, milterPort int) mta {
	t.Helper()
	switch kind {
	case "postfix":
		cfg := postfixConfig{}
		if milterPort != 0 {
			cfg.milter = inetSpec(milterPort)
		}
		return startPostfix(t, "mx", cfg)
	case "sendmail":
		return startSendmail(t, "mx", milterPort)
	}
	t.Fatalf("unknown MTA %q", kind)
	return nil
}
