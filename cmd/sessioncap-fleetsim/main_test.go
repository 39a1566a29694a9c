package main

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		d := make([]time.Duration, len(ns))
		for i, n := range ns {
			d[i] = time.Duration(n) * time.Millisecond
		}
		return d
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	for _, tt := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"median of four is the second (nearest rank)", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"median of five", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"p99 of 100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p50 of 100", ms(hundred...), 50, 50 * time.Millisecond},
		{"p100 is the max", ms(hundred...), 100, 100 * time.Millisecond},
		{"p99 of 10 is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{"tiny p is the min", ms(1, 2, 3), 0.001, time.Millisecond},
	} {
		if got := percentile(tt.sorted, tt.p); got != tt.want {
			t.Errorf("%s: percentile(%v, %v) = %v, want %v", tt.name, tt.sorted, tt.p, got, tt.want)
		}
	}
}

func TestParseListening(t *testing.T) {
	for _, tt := range []struct {
		line, milter, metrics string
		ok                    bool
	}{
		{
			line:   `time=2025-01-02T03:04:05.000Z level=INFO msg=listening milter=inet:127.0.0.1:41235 metrics=127.0.0.1:39017 admin=unix:/tmp/x/admin-1.sock config=/tmp/x/sessioncap-1.toml mode=enforce store=redis version=dev`,
			milter: "127.0.0.1:41235", metrics: "127.0.0.1:39017", ok: true,
		},
		{line: `time=2025-01-02T03:04:05.000Z level=INFO msg="shared store back; deciding from Redis again"`},
		{line: `level=INFO msg=listening milter=unix:/run/sessioncap/milter.sock metrics=127.0.0.1:9829`}, // not TCP: unusable here
		{line: `level=INFO msg=listening_elsewhere milter=inet:127.0.0.1:1 metrics=127.0.0.1:2`},
		{line: ``},
	} {
		milter, metrics, ok := parseListening(tt.line)
		if milter != tt.milter || metrics != tt.metrics || ok != tt.ok {
			t.Errorf("parseListening(%q) = %q, %q, %v; want %q, %q, %v", tt.line, milter, metrics, ok, tt.milter, tt.metrics, tt.ok)
		}
	}
}

func TestRenderConfigRedis(t *testing.T) {
	got := renderConfig(daemonConfig{
		Backend: "redis", RedisAddresses: []string{"127.0.0.1:6390", "127.0.0.1:6391"},
		MaxConnections: 1000, Window: time.Minute, Ban: 5 * time.Minute, AdminSocket: "/tmp/f/admin-1.sock",
	})
	want := `# written by sessioncap-fleetsim
mode = "enforce"

[frequency]
max_connections = 1000
window = "1m0s"
ban = "5m0s"

[concurrency]
max_per_address = 0
max_total = 0

[addresses]
ipv4_prefix = 24

[store]
backend = "redis"
state_file = ""

[store.redis]
addresses = ["127.0.0.1:6390", "127.0.0.1:6391"]
key_prefix = "sessioncap:"

[admin]
listen = "unix:/tmp/f/admin-1.sock"

[exempt]
networks = []
`
	if got != want {
		t.Errorf("renderConfig:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderConfigMemoryHasNoRedisTable(t *testing.T) {
	got := renderConfig(daemonConfig{Backend: "memory", MaxConnections: 3, Window: time.Hour, Ban: 0, AdminSocket: "/tmp/a.sock"})
	for _, want := range []string{"backend = \"memory\"", "max_connections = 3\nwindow = \"1h0m0s\"\nban = \"0s\"", "networks = []"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "[store.redis]") {
		t.Errorf("memory config has a [store.redis] table:\n%s", got)
	}
}

func TestClientAddr(t *testing.T) {
	for _, tt := range []struct {
		i, prefixes int
		want        string
	}{
		{0, 5000, "10.0.0.1"},
		{1, 5000, "10.0.1.1"},
		{256, 5000, "10.1.0.1"},
		{4999, 5000, "10.19.135.1"},
		{5000, 5000, "10.0.0.2"}, // the second round: same /24, another host
		{65535, maxPrefixes, "10.255.255.1"},
	} {
		if got := clientAddr(tt.i, tt.prefixes); got != tt.want {
			t.Errorf("clientAddr(%d, %d) = %q, want %q", tt.i, tt.prefixes, got, tt.want)
		}
	}
}
