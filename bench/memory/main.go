// Command memory measures what the in-memory store (counters.Memory) costs
// per tracked address prefix, and that its heap stays flat under a flood of
// distinct prefixes beyond its bound. Keys are made as the milter makes them
// (limits.StoreKey of the frequency rule) and go through the real Hit path.
//
// It also measures what a ban costs, apart from the windows.
//
//	go run ./bench/memory [-prefixes 1000000] [-bans 100000] [-flood 5000000]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"time"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("memory", flag.ContinueOnError)
	fs.SetOutput(stderr)
	prefixes := fs.Int("prefixes", 1_000_000, "prefixes tracked to measure the bytes each costs")
	flood := fs.Int("flood", 5_000_000, "distinct prefixes of the flood (0: no flood)")
	maxTracked := fs.Int("max-tracked", counters.DefaultMaxTracked, "the store's bound during the flood")
	bans := fs.Int("bans", counters.DefaultMaxBans, "prefixes banned to measure the bytes a ban costs (0: skip)")
	quotaKeys := fs.Int("quota-keys", 1_000_000, "quota windows ([[rate]], sender keys) counted to measure the bytes each costs (0: skip)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// The default frequency rule: never crossed by one hit per prefix.
	rate := limits.Frequency{MaxConnections: 120, Window: time.Minute, Ban: 5 * time.Minute}.Rate()
	fmt.Fprintf(stdout, "go %s, %s/%s, GOMAXPROCS %d\n\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0))

	fmt.Fprintln(stdout, "| keys | prefixes | heap in use / prefix | heap allocated / prefix | ns / Hit |")
	fmt.Fprintln(stdout, "|---|---|---|---|---|")
	for _, fam := range []struct {
		name   string
		prefix func(int) netip.Prefix
	}{{"IPv4 /32", v4}, {"IPv6 /64", v6}} {
		before := heap()
		m := counters.NewMemory(counters.MemoryOptions{MaxTracked: *prefixes})
		t0 := time.Now()
		hits(m, 0, *prefixes, fam.prefix, rate)
		took := time.Since(t0)
		after := heap()
		if st, _ := m.Stats(context.Background()); st.Tracked != int64(*prefixes) {
			fmt.Fprintf(stderr, "tracked %d, want %d\n", st.Tracked, *prefixes)
			return 1
		}
		n := float64(*prefixes)
		fmt.Fprintf(stdout, "| %s | %d | %.1f B | %.1f B | %.0f |\n", fam.name, *prefixes,
			float64(after.HeapInuse-before.HeapInuse)/n, float64(after.HeapAlloc-before.HeapAlloc)/n, float64(took.Nanoseconds())/n)
		runtime.KeepAlive(m)
	}
	if *bans > 0 {
		before := heap()
		m := counters.NewMemory(counters.MemoryOptions{MaxBans: *bans})
		for i := 0; i < *bans; i++ {
			if _, err := m.Ban(context.Background(), limits.StoreKey(limits.KeyFrequency, "", v4(i)), time.Hour, counters.StoredReason(string(limits.LimitFrequency), "")); err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
		}
		after := heap()
		if st, _ := m.Stats(context.Background()); st.Banned != int64(*bans) {
			fmt.Fprintf(stderr, "banned %d, want %d\n", st.Banned, *bans)
			return 1
		}
		fmt.Fprintf(stdout, "\n| bans (IPv4 /32, no window) | heap in use / ban |\n|---|---|\n| %d | %.1f B |\n",
			*bans, float64(after.HeapInuse-before.HeapInuse)/float64(*bans))
		runtime.KeepAlive(m)
	}
	if *quotaKeys > 0 {
		// A sender quota's keys as the session core makes them
		// (limits.QuotaStoreKey): 50 bytes of key text each.
		before := heap()
		m := counters.NewMemory(counters.MemoryOptions{MaxTracked: *quotaKeys})
		ops := make([]limits.QuotaOp, 1)
		t0 := time.Now()
		for i := 0; i < *quotaKeys; i++ {
			ops[0] = limits.QuotaOp{Key: limits.QuotaStoreKey("sender-hourly", limits.QuotaSender, fmt.Sprintf("user%07d@example.com", i)), Window: time.Hour, Limit: 200, Add: 1}
			if _, err := m.Quota(context.Background(), ops); err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
		}
		took := time.Since(t0)
		after := heap()
		if n := m.QuotaTracked(); n != *quotaKeys {
			fmt.Fprintf(stderr, "quota windows %d, want %d\n", n, *quotaKeys)
			return 1
		}
		key := len(limits.QuotaStoreKey("sender-hourly", limits.QuotaSender, "user0000000@example.com"))
		fmt.Fprintf(stdout, "\n| quota windows (%d-byte keys) | heap in use / key | ns / Quota |\n|---|---|---|\n| %d | %.1f B | %.0f |\n",
			key, *quotaKeys, float64(after.HeapInuse-before.HeapInuse)/float64(*quotaKeys), float64(took.Nanoseconds())/float64(*quotaKeys))
		runtime.KeepAlive(m)
	}
	if *flood <= 0 {
		return 0
	}

	fmt.Fprintf(stdout, "\nflood: %d distinct IPv4 /32 prefixes, max_tracked %d\n\n", *flood, *maxTracked)
	fmt.Fprintln(stdout, "| prefixes seen | tracked | evictions | heap in use | process RSS |")
	fmt.Fprintln(stdout, "|---|---|---|---|---|")
	base := heap()
	m := counters.NewMemory(counters.MemoryOptions{MaxTracked: *maxTracked})
	step := max(*flood/10, 1)
	var atBound, peak uint64
	for done := 0; done < *flood; {
		n := min(step, *flood-done)
		hits(m, done, n, v4, rate)
		done += n
		inuse := heap().HeapInuse - base.HeapInuse
		st, _ := m.Stats(context.Background())
		fmt.Fprintf(stdout, "| %d | %d | %d | %.1f MB | %.1f MB |\n", done, st.Tracked, st.Evictions, float64(inuse)/1e6, float64(rss())/1e6)
		if done <= *maxTracked {
			atBound = inuse
		}
		peak = max(peak, inuse)
	}
	if atBound > 0 {
		fmt.Fprintf(stdout, "\npeak heap in use %.1f MB = %.2f × the heap at the bound (%.1f MB)\n", float64(peak)/1e6, float64(peak)/float64(atBound), float64(atBound)/1e6)
	}
	runtime.KeepAlive(m)
	return 0
}

// hits hits n distinct prefixes from the first-th on, once each.
func hits(m *counters.Memory, first, n int, prefix func(int) netip.Prefix, r limits.Rate) {
	ctx := context.Background()
	for i := first; i < first+n; i++ {
		if _, err := m.Hit(ctx, limits.StoreKey(limits.KeyFrequency, "", prefix(i)), 1, r); err != nil {
			panic(err)
		}
	}
}

// v4 is the i-th IPv4 /32 from 10.0.0.0 on (i < 2^28).
func v4(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10 + byte(i>>24), byte(i >> 16), byte(i >> 8), byte(i)}), 32)
}

// v6 is the i-th IPv6 /64 in 2001:db8::/32.
func v6(i int) netip.Prefix {
	a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 4: byte(i >> 24), 5: byte(i >> 16), 6: byte(i >> 8), 7: byte(i)}
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// heap collects garbage and reads the heap statistics.
func heap() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms
}

// rss is the process's resident set size from /proc (0 where there is none).
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, res int64
	fmt.Sscan(string(b), &size, &res)
	return res * int64(os.Getpagesize())
}
