package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func inetSpec(port int) string { return fmt.Sprintf("inet:127.0.0.1:%d", port) }

// daemon is a running sessioncap binary.
type daemon struct {
	p           *proc
	milterPort  int
	metricsAddr string
	configPath  string
}

// baseConfig is the start of every test's sessioncap.toml: loopback is not
// exempt (the default exempts it, and all test traffic comes from there),
// and every limit is off unless the test sets it.
const baseConfig = `[log]
level = "debug"

[exempt]
networks = []
authenticated = false
`

// startBehindSessioncap starts an MTA with startMTA, whose milter is
// sessioncap on milterPort, then sessioncap there with config. The MTA comes
// first so that its start-up probe connection does not count as a session
// in sessioncap's frequency limit; so the milter port is picked before
// sessioncap binds it, and if another process takes it meanwhile both are
// started again on another port.
func startBehindSessioncap[M mta](t testing.TB, config string, startMTA func(milterPort int) M) (M, *daemon) {
	t.Helper()
	requireSessioncap(t)
	type pair struct {
		m M
		d *daemon
	}
	p := startOnFreePort(t, "sessioncap behind an MTA", func(milterPort int) (pair, error) {
		m := startMTA(milterPort)
		d, err := tryStartSessioncap(t, milterPort, config)
		if err != nil {
			m.stop(t)
			return pair{}, err
		}
		return pair{m, d}, nil
	})
	return p.m, p.d
}

var listeningRe = regexp.MustCompile(`msg=listening milter=inet:(\S+) metrics=(\S+)`)

// tryStartSessioncap writes config, followed by baseConfig, to a file of
// its own and runs the daemon with its milter on milterPort and metrics on
// 127.0.0.1:0, until it logs where it listens (after binding both).
// errPortTaken means milterPort was bound by another process.
func tryStartSessioncap(t testing.TB, milterPort int, config string) (*daemon, error) {
	t.Helper()
	dir := instanceDir(t, "sessioncap")
	d := &daemon{
		milterPort: milterPort,
		configPath: filepath.Join(dir, "sessioncap.toml"),
	}
	// an admin socket of its own: never the host's /run/sessioncap/admin.sock
	config += "\n" + baseConfig + "\n[admin]\nlisten = \"unix:" + filepath.Join(dir, "admin.sock") + "\"\n"
	writeFile(t, d.configPath, config, 0o644)
	d.p = startProc(t, "sessioncap", filepath.Join(dir, "output"), nil, sessioncapBin,
		"-config", d.configPath,
		"-listen", inetSpec(d.milterPort),
		"-metrics-listen", "127.0.0.1:0")
	t.Cleanup(func() {
		d.p.stop(t, 5*time.Second)
		if t.Failed() {
			logTail(t, "sessioncap output", d.p.output(), 64<<10)
			logTail(t, "sessioncap.toml", config, 8<<10)
		}
	})
	var err error
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out := d.p.output()
		if m := listeningRe.FindStringSubmatch(out); m != nil {
			if m[1] != fmt.Sprintf("127.0.0.1:%d", milterPort) {
				err = fmt.Errorf("listening on milter %s, want port %d", m[1], milterPort)
			}
			d.metricsAddr = m[2]
			break
		}
		if d.p.exited() {
			err = fmt.Errorf("sessioncap exited before listening: %v\n%s", d.p.err, out)
			if portTakenIn(out) {
				err = fmt.Errorf("%w: %v", errPortTaken, err)
			}
			break
		}
		if time.Now().After(deadline) {
			err = fmt.Errorf("sessioncap logged no listening line within 15s:\n%s", out)
			break
		}
	}
	if err != nil {
		d.p.stop(t, 5*time.Second)
		return nil, err
	}
	return d, nil
}

// metrics scrapes /metrics into "name{k="v",…}" → value, labels sorted.
func (d *daemon) metrics(t testing.TB) map[string]float64 {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + d.metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s\n%s", resp.Status, b)
	}
	m, err := parseMetrics(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return m
}

// parseMetrics reads the Prometheus text format, enough for counters and
// gauges with simple label values.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("bad metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad value in %q", line)
		}
		out[canonicalSeries(line[:i])] = v
	}
	return out, sc.Err()
}

// canonicalSeries sorts the labels of `name{b="2",a="1"}`.
func canonicalSeries(s string) string {
	name, rest, ok := strings.Cut(s, "{")
	if !ok {
		return s
	}
	rest = strings.TrimSuffix(rest, "}")
	var labels []string
	for _, l := range strings.Split(rest, ",") {
		if l = strings.TrimSpace(l); l != "" {
			labels = append(labels, l)
		}
	}
	sort.Strings(labels)
	return name + "{" + strings.Join(labels, ",") + "}"
}

// refusals is sessioncap_refusals_total for one limit, stage and mode; the
// series must exist (the contract pre-initialises them to 0).
func refusals(t testing.TB, m map[string]float64, limit, stage, mode string) float64 {
	t.Helper()
	key := canonicalSeries(fmt.Sprintf(`sessioncap_refusals_total{limit=%q,stage=%q,mode=%q}`, limit, stage, mode))
	v, ok := m[key]
	if !ok {
		t.Errorf("metrics have no series %s", key)
	}
	return v
}

// sumMetric adds up every series of a metric name.
func sumMetric(m map[string]float64, name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}
