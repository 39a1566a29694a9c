package counters_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/counters/storetest"
	"github.com/sessioncap/sessioncap/limits"
)

// A flood of forged senders is bounded like prefixes: the quota windows stay
// within MaxTracked, the least recently counted go first, and neither the
// bans nor the prefixes' windows are evicted for them.
func TestMemoryQuotaEviction(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock()
	m := counters.NewMemory(counters.MemoryOptions{MaxTracked: 10, MaxBans: 10, Now: clock.Now})
	if _, err := m.Ban(ctx, "freq:192.0.2.0/24", time.Hour, "manual"); err != nil {
		t.Fatal(err)
	}
	freq := limits.Rate{Max: 100, Window: time.Minute}
	if _, err := m.Hit(ctx, "freq:198.51.100.0/24", 5, freq); err != nil {
		t.Fatal(err)
	}
	add := func(k string) {
		if _, err := m.Quota(ctx, []limits.QuotaOp{{Key: k, Window: time.Hour, Limit: 100, Add: 1}}); err != nil {
			t.Fatal(err)
		}
	}
	add("quota:s:sender:kept@example.org")
	for i := range 1000 {
		add(fmt.Sprintf("quota:s:sender:forged%d@example.org", i))
		if i%5 == 0 {
			add("quota:s:sender:kept@example.org") // counted often: stays
		}
	}
	if n := m.QuotaTracked(); n != 10 {
		t.Errorf("%d quota windows tracked, want the bound 10", n)
	}
	peek := func(k string) int64 {
		u, err := m.Quota(ctx, []limits.QuotaOp{{Key: k, Window: time.Hour, Limit: 100}})
		if err != nil {
			t.Fatal(err)
		}
		return u[0].Window.Curr
	}
	if c := peek("quota:s:sender:kept@example.org"); c != 201 {
		t.Errorf("the busy key counts %d, want 201", c)
	}
	if c := peek("quota:s:sender:forged0@example.org"); c != 0 {
		t.Errorf("the oldest forged key still counts %d", c)
	}
	if c := peek("quota:s:sender:forged999@example.org"); c != 1 {
		t.Errorf("the newest forged key counts %d", c)
	}
	st, _ := m.Stats(ctx)
	if st.Banned != 1 || st.Tracked != 1 || st.Evictions != 991 {
		t.Errorf("stats %+v: want the ban and the prefix window kept, 991 quota windows evicted", st)
	}
	if h, _ := m.Hit(ctx, "freq:198.51.100.0/24", 0, freq); h.Count != 5 {
		t.Errorf("the prefix window counts %d, want 5", h.Count)
	}
}

// A restart keeps the quota windows: the state file carries them (64-bit
// counts), with their expiry, in the order they were last counted.
func TestMemoryQuotaStateFile(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock()
	m := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	hour := []limits.QuotaOp{{Key: "quota:disk:network:192.0.2.0/24", Window: time.Hour, Limit: 10 << 30, Add: 6 << 30}}
	minute := []limits.QuotaOp{{Key: "quota:burst:sender:a@example.org", Window: time.Minute, Limit: 10, Add: 3}}
	m.Quota(ctx, hour)
	m.Quota(ctx, minute)
	clock.Add(30 * time.Second)
	path := t.TempDir() + "/state"
	if err := m.WriteStateFile(path, nil); err != nil {
		t.Fatal(err)
	}
	clock.Add(2 * time.Minute) // the minute window has expired by the restart
	m2 := counters.NewMemory(counters.MemoryOptions{Now: clock.Now})
	n, _, err := m2.ReadStateFile(path)
	if err != nil || n != 1 {
		t.Fatalf("read %d windows, %v; want the hour window only", n, err)
	}
	check := []limits.QuotaOp{{Key: hour[0].Key, Window: time.Hour, Limit: 10 << 30, Need: 5 << 30, Hard: true}}
	if u, _ := m2.Quota(ctx, check); !u[0].Refused || u[0].Window.Curr != 6<<30 {
		t.Fatalf("after the restart: %+v; want 6 GiB counted and 5 more refused", u[0])
	}
	if m2.QuotaTracked() != 1 {
		t.Errorf("%d quota windows after the restart", m2.QuotaTracked())
	}
}
