package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/admin"
	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/internal/redistest"
)

// fleetFrequency is the rule both fleet tests share: the 4th connection of
// a client within the hour is refused and bans it for an hour.
const fleetFrequency = "[frequency]\nmax_connections = 3\nwindow = \"1h\"\nban = \"1h\"\n"

// connectCode opens a session for client, closes it, and returns the
// connect reply's SMTP code (0 when accepted) and how long the reply took.
// A session that errors or hangs (go-milter's client reads with a 10s
// timeout) fails the test in connectFrom.
func (d *daemonProc) connectCode(client string) (uint16, time.Duration) {
	d.t.Helper()
	start := time.Now()
	s, act := d.connectFrom(client)
	took := time.Since(start)
	s.Close()
	if !act.StopProcessing() {
		return 0, took
	}
	return act.SMTPCode, took
}

// sharedWindow connects client on a, b, a (each accepted), then on b (the
// 4th over two hosts: refused and banned) and on a (the ban holds there
// too). It returns the times of the three accepted connects.
func sharedWindow(t *testing.T, a, b *daemonProc, client string) []time.Duration {
	t.Helper()
	var took []time.Duration
	for i, d := range []*daemonProc{a, b, a} {
		code, dur := d.connectCode(client)
		if code != 0 {
			t.Fatalf("%s: connection %d refused with %d", client, i+1, code)
		}
		took = append(took, dur)
	}
	if code, _ := b.connectCode(client); code != 421 {
		t.Fatalf("%s: the 4th connection over two hosts got %d, want 421: the window is not shared", client, code)
	}
	if code, _ := a.connectCode(client); code != 421 {
		t.Fatalf("%s: the ban made on host b does not hold on host a (%d)", client, code)
	}
	return took
}

// adminCLI runs the binary's admin command args against d. The binary is
// built with -race, whose runtime sleeps 1s at exit by default
// (atexit_sleep_ms) to catch races in goroutines still running; a
// command that has answered has no such goroutine worth the wait.
func adminCLI(d *daemonProc, args ...string) *exec.Cmd {
	cmd := exec.Command(binary, append(args, "-admin", d.admin)...)
	cmd.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// bansJSON runs `sessioncap bans -json` against d.
func bansJSON(t *testing.T, d *daemonProc) []counters.Ban {
	t.Helper()
	out, err := adminCLI(d, "bans", "-json").Output()
	if err != nil {
		t.Fatalf("bans -json: %v\n%s", err, out)
	}
	var resp admin.BansResponse // the shape of GET /v1/bans
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("bans -json: %v\n%s", err, out)
	}
	return resp.Bans
}

// Two daemons on a three-primary Redis Cluster share their windows and
// bans: for clients whose keys live on every primary, the 4th connection
// over two hosts is refused, the ban holds on both, both list it with the
// host recorded by the one that made it (this machine's name: both daemons
// run here), and an unban on either lifts it on both. No store call failed
// (nothing was decided from a local store).
func TestFleetOnRedisCluster(t *testing.T) {
	nodes := redistest.Cluster(t)
	var seeds []string
	for _, n := range nodes {
		seeds = append(seeds, fmt.Sprintf("%q", n.Addr()))
	}
	// a generous timeout: this test is about sharing, not about a slow
	// store, and a call that timed out would be decided locally
	config := fleetFrequency + "[store]\nbackend = \"redis\"\ntimeout = \"2s\"\n" +
		"[store.redis]\ncluster = true\naddresses = [" + strings.Join(seeds, ", ") + "]\n"
	a, b := startDaemon(t, config), startDaemon(t, config)

	clients := []string{"192.0.2.1", "192.0.2.2", "198.51.100.3", "203.0.113.4", "192.0.2.5", "198.51.100.6"}
	for _, c := range clients {
		sharedWindow(t, a, b, c)
	}
	// the clients' bans (a ban replaces the window) are spread over all
	// three primaries
	onNode := map[string]int{}
	for i, n := range nodes {
		indexes, err := redistest.Do(n.Addr(), "KEYS", "*:bans")
		if err != nil {
			t.Fatalf("KEYS on node %d: %v", i, err)
		}
		for _, idx := range strings.Fields(indexes) {
			for _, c := range clients {
				if score, err := redistest.Do(n.Addr(), "ZSCORE", idx, "freq:"+c+"/32"); err != nil {
					t.Fatalf("ZSCORE on node %d: %v", i, err)
				} else if score != "" {
					if prev, ok := onNode[c]; ok {
						t.Fatalf("ban of %s on nodes %d and %d", c, prev, i)
					}
					onNode[c] = i
				}
			}
		}
	}
	for _, c := range clients {
		if _, ok := onNode[c]; !ok {
			t.Fatalf("no ban of %s in any node's indexes", c)
		}
	}
	used := map[int]bool{}
	for _, i := range onNode {
		used[i] = true
	}
	if len(used) != len(nodes) {
		t.Fatalf("the clients' bans are on nodes %v only; pick clients that cover every primary", onNode)
	}
	t.Logf("bans by node: %v", onNode)
	for _, d := range []*daemonProc{a, b} {
		if got := d.metric(`sessioncap_store_duration_seconds_count{op="hit",result="error"}`); got != "0" {
			t.Fatalf("%s hits failed: some connects were decided without the Cluster", got)
		}
		if got := d.metric("sessioncap_store_up"); got != "1" {
			t.Fatalf("sessioncap_store_up %s", got)
		}
	}

	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]*daemonProc{"a": a, "b": b} {
		bans := bansJSON(t, d)
		for _, c := range clients {
			i := slices.IndexFunc(bans, func(b counters.Ban) bool { return b.Key == "freq:"+c+"/32" })
			if i < 0 {
				t.Fatalf("bans -json on %s does not list %s: %+v", name, c, bans)
			}
			if bans[i].Host != host || bans[i].Origin != "frequency" || !bans[i].Until.After(bans[i].Since) {
				t.Fatalf("bans -json on %s: %+v, want host %q and origin frequency", name, bans[i], host)
			}
		}
		if len(bans) != len(clients) {
			t.Fatalf("bans -json on %s lists %d bans, want %d: %+v", name, len(bans), len(clients), bans)
		}
	}

	// an unban on one host lifts the ban on the other, whichever node
	// holds it
	for i, c := range clients {
		on, other := a, b
		if i%2 == 1 {
			on, other = b, a
		}
		out, err := adminCLI(on, "unban", c).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "lifted the ban of freq:"+c+"/32") {
			t.Fatalf("unban %s: %v\n%s", c, err, out)
		}
		if code, _ := other.connectCode(c); code != 0 {
			t.Fatalf("an unban of %s on one host did not lift the ban on the other (%d)", c, code)
		}
	}
	for name, d := range map[string]*daemonProc{"a": a, "b": b} {
		if bans := bansJSON(t, d); len(bans) != 0 {
			t.Fatalf("bans left on %s after the unbans: %+v", name, bans)
		}
	}
}

// Two daemons on Redis through Sentinel (one with on_error = "local", one
// with "tempfail"): while the primary is killed and the sentinel promotes
// the replica, every connect is answered (accepted, or 421 under tempfail)
// within store.timeout plus a margin taken from this run's connect times;
// afterwards both use the promoted replica without a restart: a ban made
// before the failover still holds on both, and a window shared between
// them bans again.
func TestFleetSentinelFailover(t *testing.T) {
	sentinel, primary, replica := redistest.Sentinel(t)
	const timeout = 500 * time.Millisecond
	config := func(onError string) string {
		return fleetFrequency + fmt.Sprintf("[store]\nbackend = \"redis\"\ntimeout = \"%s\"\non_error = %q\n"+
			"[store.redis]\nmaster_name = \"m\"\naddresses = [%q]\n", timeout, onError, sentinel.Addr())
	}
	a, b := startDaemon(t, config("local")), startDaemon(t, config("tempfail"))

	baseline := sharedWindow(t, a, b, "192.0.2.7")
	// the ban reached the replica before the primary dies
	if n, err := redistest.Do(primary.Addr(), "WAIT", "1", "5000"); err != nil || n != "1" {
		t.Fatalf("WAIT for the replica: %q %v", n, err)
	}
	slices.Sort(baseline)
	bound := timeout + max(10*baseline[len(baseline)/2], 500*time.Millisecond)

	primary.Kill()
	killed := time.Now()
	var refused, answered int
	var slowest time.Duration
	for i := 0; ; i++ {
		if time.Since(killed) > 30*time.Second {
			p, err := redistest.MasterPort(sentinel)
			t.Fatalf("no failover through the daemons after 30s: master port %d (%v), replica %d\n%s", p, err, replica.Port, sentinel.Log())
		}
		d := a
		if i%2 == 1 {
			d = b
		}
		code, took := d.connectCode(fmt.Sprintf("198.51.%d.%d", 100+i/256, i%256))
		switch {
		case took > bound:
			t.Fatalf("connect %d after the kill answered after %v (bound %v)", i, took, bound)
		case d == a && code != 0:
			t.Fatalf("connect %d after the kill refused with %d under on_error = local", i, code)
		case d == b && code != 0 && code != 421:
			t.Fatalf("connect %d after the kill refused with %d under on_error = tempfail, want 421 or accepted", i, code)
		case code == 421:
			refused++
		}
		answered++
		slowest = max(slowest, took)
		if p, err := redistest.MasterPort(sentinel); err == nil && p == replica.Port &&
			a.metric("sessioncap_store_up") == "1" && b.metric("sessioncap_store_up") == "1" {
			break
		}
		time.Sleep(20 * time.Millisecond) // pacing, not proof
	}
	t.Logf("failover through the daemons after %v: %d connects answered, the slowest in %v (bound %v), %d refused under tempfail",
		time.Since(killed), answered, slowest, bound, refused)
	for _, d := range []*daemonProc{a, b} {
		// the outage was seen (the store went down and came back), not
		// slept through
		d.waitLog("shared store down")
		d.waitLog("shared store back")
	}
	if refused == 0 {
		t.Fatal("no connect refused under on_error = tempfail while there was no primary")
	}

	// the promoted replica holds the ban made before the failover
	for name, d := range map[string]*daemonProc{"a": a, "b": b} {
		if code, _ := d.connectCode("192.0.2.7"); code != 421 {
			t.Fatalf("after the failover the ban made before it does not hold on %s (%d)", name, code)
		}
	}
	// and both share windows and bans on it again, without a restart
	sharedWindow(t, a, b, "203.0.113.9")
}
