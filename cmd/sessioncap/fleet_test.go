package main

import (
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/internal/redistest"
)

// Two sessioncap processes sharing one Redis: connections spread over both
// ban the prefix on both, an unban on one lifts it on both, a dead Redis
// never holds a connect longer than store.timeout, and when Redis is back
// the shared state is used again without a restart.
func TestFleetSharesBansThroughRedis(t *testing.T) {
	rds := redistest.Standalone(t)
	const timeout = 300 * time.Millisecond
	config := fmt.Sprintf("[frequency]\nmax_connections = 3\nwindow = \"1h\"\nban = \"1h\"\n"+
		"[store]\nbackend = \"redis\"\ntimeout = \"%s\"\n[store.redis]\naddresses = [\"%s\"]\n", timeout, rds.Addr())
	a, b := startDaemon(t, config), startDaemon(t, config)
	connect := (*daemonProc).connectCode
	var baseline []time.Duration
	for i, d := range []*daemonProc{a, b, a} {
		code, took := connect(d, "192.0.2.7")
		if code != 0 {
			t.Fatalf("connection %d refused with %d", i+1, code)
		}
		baseline = append(baseline, took)
	}
	if code, _ := connect(b, "192.0.2.7"); code != 421 {
		t.Fatalf("the 4th connection over two hosts was not refused (%d): the window is not shared", code)
	}
	if code, _ := connect(a, "192.0.2.7"); code != 421 {
		t.Fatal("a ban made on host b does not hold on host a")
	}
	out, err := exec.Command(binary, "unban", "192.0.2.7", "-admin", a.admin).CombinedOutput()
	if err != nil {
		t.Fatalf("unban on a: %v\n%s", err, out)
	}
	if code, _ := connect(b, "192.0.2.7"); code != 0 {
		t.Fatal("an unban on host a did not lift the ban on host b")
	}

	// Redis dies: every connect is still answered, within the store timeout
	// plus a margin taken from this run's own connect times.
	rds.Kill()
	slices.Sort(baseline)
	bound := timeout + max(10*baseline[len(baseline)/2], 500*time.Millisecond)
	for i := 0; i < 10; i++ {
		code, took := connect(a, fmt.Sprintf("198.51.100.%d", i))
		if code != 0 || took > bound {
			t.Fatalf("connect %d with Redis down: code %d after %v (bound %v)", i, code, took, bound)
		}
	}
	a.waitMetric("sessioncap_store_up", "0")
	a.waitLog("shared store down")
	// a probe of the dead Redis fails: go-redis logs its failed dial
	a.waitMetricAtLeast(`sessioncap_store_duration_seconds_count{op="ping",result="error"}`, 1)

	// Redis is back (empty): both hosts use it again by themselves.
	rds.Restart()
	a.waitMetric("sessioncap_store_up", "1")
	b.waitMetric("sessioncap_store_up", "1")
	a.waitLog("shared store back")
	// at the default level the outage is the daemon's two lines; go-redis's
	// own line per failed dial (written before the call that failed returned)
	// is Debug
	if logs := a.logs(); strings.Count(logs, "shared store down") != 1 || strings.Contains(logs, "component=redis") || strings.Contains(logs, "component=go-redis") {
		t.Fatalf("logs of the outage: want one line \"shared store down\" and none from go-redis:\n%s", logs)
	}
	for i, d := range []*daemonProc{a, b, a} {
		if code, _ := connect(d, "203.0.113.9"); code != 0 {
			t.Fatalf("after recovery connection %d refused", i+1)
		}
	}
	if code, _ := connect(b, "203.0.113.9"); code != 421 {
		t.Fatal("after recovery the hosts do not share their windows again")
	}
	if out, err := exec.Command(binary, "status", "-admin", a.admin).CombinedOutput(); err != nil || !strings.Contains(string(out), "redis") {
		t.Fatalf("status: %v\n%s", err, out)
	}
}

// waitMetricAtLeast polls the scrape until series is at least min.
func (d *daemonProc) waitMetricAtLeast(series string, min float64) {
	d.t.Helper()
	d.waitSeries(series, fmt.Sprintf("at least %v", min), func(v string) bool {
		f, err := strconv.ParseFloat(v, 64)
		return err == nil && f >= min
	})
}

// waitMetric polls the scrape until series has value.
func (d *daemonProc) waitMetric(series, value string) {
	d.t.Helper()
	d.waitSeries(series, value, func(v string) bool { return v == value })
}

// waitSeries polls the scrape, for up to 20s, until the value of series
// satisfies ok (want describes it for the failure).
func (d *daemonProc) waitSeries(series, want string, ok func(value string) bool) {
	d.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, line := range strings.Split(d.scrape(), "\n") {
			if v, found := strings.CutPrefix(line, series+" "); found && ok(v) {
				return
			}
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s never became %s:\n%s", series, want, d.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
