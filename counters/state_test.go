package counters_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/counters/storetest"
	"github.com/sessioncap/sessioncap/limits"
)

// Bans and windows come back after a restart with their remaining time;
// bans that ended while the daemon was down do not.
func TestStateFileRoundTrip(t *testing.T) {
	clock := storetest.NewClock()
	path := filepath.Join(t.TempDir(), "state")
	a := counters.NewMemory(counters.MemoryOptions{Now: clock.Now, Host: "mx1"})
	r := limits.Rate{Max: 3, Window: time.Minute, Ban: time.Hour, Reason: "frequency"}
	a.Hit(ctx, "freq:192.0.2.0/24", 4, r)                     // banned for 1h
	a.Ban(ctx, "freq:198.51.100.0/24", time.Minute, "manual") // ends while down
	a.Hit(ctx, "freq:203.0.113.0/24", 2, r)                   // a window
	if err := a.WriteStateFile(path, map[string]time.Duration{"freq": time.Minute}); err != nil {
		t.Fatal(err)
	}
	clock.Add(10 * time.Minute)
	b := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	windows, bans, err := b.ReadStateFile(path)
	if err != nil || bans != 1 {
		t.Fatalf("read: %d windows, %d bans, %v; want 1 ban", windows, bans, err)
	}
	h, _ := b.Hit(ctx, "freq:192.0.2.0/24", 1, r)
	if got := h.BannedUntil.Sub(clock.Now()); got != 50*time.Minute {
		t.Fatalf("remaining ban after restart: %v, want 50m", got)
	}
	list, _ := b.Bans(ctx)
	if len(list) != 1 || list[0].Host != "mx1" || list[0].Origin != "frequency" || list[0].Reason != "" {
		t.Fatalf("bans after restart: %+v", list)
	}
	// the window survived too (10 minutes on, it starts over: 1)
	if h, _ := b.Hit(ctx, "freq:203.0.113.0/24", 1, r); h.Count != 1 {
		t.Fatalf("window count %d", h.Count)
	}
}

func TestStateFileWindowsKeepTheirCounts(t *testing.T) {
	clock := storetest.NewClock()
	a := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	r := limits.Rate{Max: 3, Window: time.Minute, Ban: time.Hour}
	a.Hit(ctx, "k", 3, r)
	var buf bytes.Buffer
	if err := a.Save(&buf, nil); err != nil {
		t.Fatal(err)
	}
	b := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	if w, _, err := b.Load(&buf); err != nil || w != 1 {
		t.Fatalf("load: %d windows, %v", w, err)
	}
	if h, _ := b.Hit(ctx, "k", 1, r); !h.Crossed {
		t.Fatalf("the restored window did not count: %+v", h)
	}
}

// A corrupt, truncated or foreign file is kept aside and ignored.
func TestStateFileBadFilesAreKeptAside(t *testing.T) {
	clock := storetest.NewClock()
	good := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	good.Ban(ctx, "freq:192.0.2.0/24", time.Hour, "manual")
	var full bytes.Buffer
	good.Save(&full, nil)
	for name, content := range map[string]string{
		"truncated": full.String()[:full.Len()-5],
		"corrupt":   strings.Replace(full.String(), `"k"`, `"k`, 1),
		"foreign":   "# some other program's file\n",
		"empty":     "",
		"unknown":   "sessioncap-state 1\n{\"k\":\"a\",\"zz\":1}\nend\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state")
			os.WriteFile(path, []byte(content), 0o600)
			m := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
			_, _, err := m.ReadStateFile(path)
			if !errors.Is(err, counters.ErrBadState) || !strings.Contains(err.Error(), "kept aside as") {
				t.Fatalf("err %v", err)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Fatal("the bad file is still in place")
			}
			matches, _ := filepath.Glob(path + ".bad-*")
			if len(matches) != 1 {
				t.Fatalf("kept aside: %v", matches)
			}
			if st, _ := m.Stats(ctx); st.Banned != 0 || st.Tracked != 0 {
				t.Fatalf("a bad file changed the store: %+v", st)
			}
		})
	}
	// a missing file is a first start, not an error
	m := counters.NewMemory(counters.MemoryOptions{})
	if _, _, err := m.ReadStateFile(filepath.Join(t.TempDir(), "none")); err != nil {
		t.Fatal(err)
	}
}

// Every window is saved until it has expired under its own rule: the
// state file keeps a window while it is younger than two windows of its
// key's kind (as the stores expire it), not two of the shortest or the
// frequency rule's; a kind the saver is not told about is kept.
func TestStateFileKeepsEachWindowUnderItsOwnRule(t *testing.T) {
	clock := storetest.NewClock()
	a := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	rate := func(w time.Duration) limits.Rate { return limits.Rate{Max: 100, Window: w} }
	a.Hit(ctx, "freq:192.0.2.0/24", 3, rate(time.Minute))
	a.Hit(ctx, "err:192.0.2.0/24", 9, rate(time.Hour))
	a.Hit(ctx, "sdom:20000:example.org", 2, rate(48*time.Hour))
	a.Hit(ctx, "quota:192.0.2.0/24", 5, rate(24*time.Hour))
	clock.Add(10 * time.Minute)
	var buf bytes.Buffer
	windows := map[string]time.Duration{"freq": time.Minute, "err": time.Hour, "sdom": 48 * time.Hour}
	if err := a.Save(&buf, windows); err != nil {
		t.Fatal(err)
	}
	b := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	if n, _, err := b.Load(&buf); err != nil || n != 3 {
		t.Fatalf("loaded %d windows (%v), want err, sdom and quota", n, err)
	}
	for key, want := range map[string]int64{"freq:192.0.2.0/24": 0, "err:192.0.2.0/24": 9, "sdom:20000:example.org": 2, "quota:192.0.2.0/24": 5} {
		if h, _ := b.Hit(ctx, key, 0, rate(windows[key[:strings.IndexByte(key, ':')]]+time.Hour)); h.Count != want {
			t.Errorf("%s after save and load: %d, want %d", key, h.Count, want)
		}
	}
	// two of its own windows on, a window is dropped
	clock.Add(2 * time.Hour)
	buf.Reset()
	b.Save(&buf, windows)
	c := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	if n, _, _ := c.Load(&buf); n != 2 {
		t.Fatalf("two hours later: %d windows, want sdom and quota", n)
	}
}
