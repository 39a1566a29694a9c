package main

import "testing"

// A ban the frequency rule starts in monitor mode is counted and shown
// under mode="monitor", so that an alert on enforced bans
// (SessioncapBansActiveHigh selects mode="enforce") does not fire while an
// admin tries the rule out; the client is not refused.
func TestBanMetricsCarryTheMode(t *testing.T) {
	for _, mode := range []string{"monitor", "enforce"} {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t, "[frequency]\nmode = \""+mode+"\"\nmax_connections = 1\nwindow = \"1h\"\nban = \"1h\"\n")
			d.connectFrom("192.0.2.70")
			_, act := d.connectFrom("192.0.2.70")
			if refused := act.StopProcessing(); refused != (mode == "enforce") {
				t.Fatalf("second connection: %v in %s mode", act, mode)
			}
			other := map[string]string{"monitor": "enforce", "enforce": "monitor"}[mode]
			for series, want := range map[string]string{
				`sessioncap_bans_total{mode="` + mode + `"}`:   "1",
				`sessioncap_bans_total{mode="` + other + `"}`:  "0",
				`sessioncap_bans_active{mode="` + mode + `"}`:  "1",
				`sessioncap_bans_active{mode="` + other + `"}`: "0",
			} {
				if got := d.metric(series); got != want {
					t.Errorf("%s = %s, want %s", series, got, want)
				}
			}
		})
	}
}
