package packaging

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// scrapeEnv names a file with a /metrics scrape to check against instead of
// building and starting the daemon (packaging/ci.sh scrapes the installed
// package's binary and passes the result here).
const scrapeEnv = "SESSIONCAP_SCRAPE_FILE"

// targetLabels are attached by Prometheus, not exposed by the daemon.
var targetLabels = map[string]bool{"job": true, "instance": true}

// synthetic metrics are made by Prometheus itself.
var synthetic = map[string]bool{"up": true}

// series is one exposed sample's metric name and labels.
type series struct {
	name   string
	labels map[string]string
}

// exposition is a parsed text-format scrape.
type exposition struct {
	series []series
	names  map[string]bool
}

func (e *exposition) hasLabel(metric, label string) bool {
	for _, s := range e.series {
		if s.name == metric {
			if _, ok := s.labels[label]; ok {
				return true
			}
		}
	}
	return false
}

func (e *exposition) hasLabelValue(metric, label, value string) bool {
	for _, s := range e.series {
		if s.name == metric && s.labels[label] == value {
			return true
		}
	}
	return false
}

// parseExposition reads the Prometheus text format: enough of it to know
// which metric names and label pairs a scrape holds.
func parseExposition(r io.Reader) (*exposition, error) {
	e := &exposition{names: make(map[string]bool)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v: %q", n, err, line)
		}
		e.series = append(e.series, s)
		e.names[s.name] = true
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(e.series) == 0 {
		return nil, fmt.Errorf("no samples")
	}
	return e, nil
}

func parseSample(line string) (series, error) {
	s := series{labels: make(map[string]string)}
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return s, fmt.Errorf("no metric name")
	}
	s.name = line[:end]
	rest := line[end:]
	if !strings.HasPrefix(rest, "{") {
		return s, nil
	}
	rest = rest[1:]
	for {
		rest = strings.TrimLeft(rest, ", ")
		if strings.HasPrefix(rest, "}") {
			return s, nil
		}
		eq := strings.Index(rest, `="`)
		if eq <= 0 {
			return s, fmt.Errorf("bad label")
		}
		key := rest[:eq]
		rest = rest[eq+2:]
		var val strings.Builder
		i := 0
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				switch rest[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(rest[i])
				}
				continue
			}
			val.WriteByte(rest[i])
		}
		if i == len(rest) {
			return s, fmt.Errorf("unterminated label value")
		}
		s.labels[key] = val.String()
		rest = rest[i+1:]
	}
}

// scrape returns the daemon's /metrics: from $SESSIONCAP_SCRAPE_FILE if set,
// else by building ./cmd/sessioncap, starting it on free loopback ports with
// built-in defaults, and fetching /metrics once it answers.
func scrape(t *testing.T) *exposition {
	t.Helper()
	if file := os.Getenv(scrapeEnv); file != "" {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		e, err := parseExposition(f)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return e
	}
	if testing.Short() {
		t.Skip("starts the daemon; set " + scrapeEnv + " or drop -short")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the daemon with")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "sessioncap")
	build := exec.Command(gobin, "build", "-o", bin, "github.com/sessioncap/sessioncap/cmd/sessioncap")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// Built-in defaults, whatever is in /etc, and one quota on SASL users
	// (quota series exist only for configured rules; the alert rules and
	// the dashboard query them).
	cfg := filepath.Join(dir, "sessioncap.toml")
	quota := "[[rate]]\nname = \"user-hourly\"\nkey = \"user\"\ncount = \"messages\"\nlimit = 200\nwindow = \"1h\"\n"
	if err := os.WriteFile(cfg, []byte(quota), 0o644); err != nil {
		t.Fatal(err)
	}
	// Both listeners on port 0: the daemon logs the addresses it bound, so
	// no port is picked here that another process could take first.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-config", cfg,
		"-listen", "inet:127.0.0.1:0", "-metrics-listen", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		logMu   sync.Mutex
		logText strings.Builder
	)
	listening := make(chan string, 1)
	exited := make(chan error, 1)
	go func() {
		re := regexp.MustCompile(`msg=listening milter=\S+ metrics=(\S+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logText.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				listening <- m[1]
			}
		}
		exited <- cmd.Wait()
	}()
	daemonLog := func() string { logMu.Lock(); defer logMu.Unlock(); return logText.String() }
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		<-exited
		if t.Failed() {
			t.Logf("daemon log:\n%s", daemonLog())
		}
	}()
	var metricsAddr string
	select {
	case metricsAddr = <-listening:
	case err := <-exited:
		exited <- err
		t.Fatalf("daemon exited before listening: %v\n%s", err, daemonLog())
	case <-time.After(15 * time.Second):
		t.Fatalf("daemon did not log where it listens after 15s:\n%s", daemonLog())
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("/metrics on %s: %v", metricsAddr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics on %s: %s %v", metricsAddr, resp.Status, err)
	}
	e, err := parseExposition(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	return e
}

var (
	metricRe  = regexp.MustCompile(`\b((?:sessioncap|go|process)_[a-zA-Z0-9_]+|up)\b`)
	selectRe  = regexp.MustCompile(`\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}`)
	matcherRe = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	groupRe   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// checkExpr reports every metric, label and fixed label value in a PromQL
// expression that the scrape does not have.
func checkExpr(e *exposition, expr string) []string {
	var problems []string
	var metrics []string
	for _, m := range metricRe.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		if synthetic[name] {
			continue
		}
		if !e.names[name] {
			problems = append(problems, fmt.Sprintf("metric %s is not exposed", name))
			continue
		}
		metrics = append(metrics, name)
	}
	for _, sel := range selectRe.FindAllStringSubmatch(expr, -1) {
		name := sel[1]
		if synthetic[name] || !e.names[name] {
			continue
		}
		for _, m := range matcherRe.FindAllStringSubmatch(sel[2], -1) {
			label, op, value := m[1], m[2], m[3]
			if targetLabels[label] {
				continue
			}
			if !e.hasLabel(name, label) {
				problems = append(problems, fmt.Sprintf("%s has no label %s", name, label))
				continue
			}
			if op == "=" && !strings.Contains(value, "$") && !e.hasLabelValue(name, label, value) {
				problems = append(problems, fmt.Sprintf("%s has no series with %s=%q", name, label, value))
			}
		}
	}
	for _, g := range groupRe.FindAllStringSubmatch(expr, -1) {
		for label := range strings.SplitSeq(g[1], ",") {
			label = strings.TrimSpace(label)
			if label == "" || targetLabels[label] {
				continue
			}
			if !slices.ContainsFunc(metrics, func(m string) bool { return e.hasLabel(m, label) }) {
				problems = append(problems, fmt.Sprintf("no metric in the expression has label %s", label))
			}
		}
	}
	return problems
}

// dashboard is the part of a Grafana dashboard the tests look at.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Definition string          `json:"definition"`
			Query      json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw, err := os.ReadFile("grafana/sessioncap.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana/sessioncap.json is not valid JSON: %v", err)
	}
	if dec.More() {
		t.Fatal("grafana/sessioncap.json: trailing data after the dashboard")
	}
	return d
}

func TestDashboardIsWellFormed(t *testing.T) {
	d := loadDashboard(t)
	if d.UID != "sessioncap" || d.Title == "" {
		t.Errorf("uid %q, title %q: want uid sessioncap and a title", d.UID, d.Title)
	}
	ids := make(map[int]string)
	queries := 0
	for _, p := range d.Panels {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource must be the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := make(map[string]bool)
		for _, tg := range p.Targets {
			queries++
			if strings.TrimSpace(tg.Expr) == "" || refs[tg.RefID] {
				t.Errorf("panel %q: empty query or duplicate refId %q", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") {
				t.Errorf("panel %q: unbalanced parentheses in %s", p.Title, tg.Expr)
			}
			if strings.Contains(tg.Expr, "sessioncap_") && !strings.Contains(tg.Expr, `job="$job"`) {
				t.Errorf("panel %q: query does not select job=\"$job\": %s", p.Title, tg.Expr)
			}
		}
	}
	if queries == 0 {
		t.Fatal("dashboard has no queries")
	}
	// What the brief asks the dashboard to show.
	all := ""
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			all += tg.Expr + "\n"
		}
	}
	for _, want := range []string{
		"rate(sessioncap_sessions_total", "rate(sessioncap_messages_total", "rate(sessioncap_message_bytes_total",
		"sum by (limit, mode) (rate(sessioncap_refusals_total", "sum by (stage, mode) (rate(sessioncap_refusals_total",
		"sessioncap_bans_active", "histogram_quantile(0.99, sum by (le, stage) (rate(sessioncap_callback_duration_seconds_bucket",
		"sessioncap_tracked_addresses", "sessioncap_config_last_reload_successful",
		"rate(sessioncap_tag_headers_total", "sum by (rule, key, mode) (rate(sessioncap_quota_refusals_total",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("dashboard has no query with %q", want)
		}
	}
}

func TestDashboardQueriesExposedMetrics(t *testing.T) {
	d := loadDashboard(t)
	e := scrape(t)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, problem := range checkExpr(e, tg.Expr) {
				t.Errorf("panel %q: %s\n\tin %s", p.Title, problem, tg.Expr)
			}
		}
	}
	for _, v := range d.Templating.List {
		for _, problem := range checkExpr(e, v.Definition) {
			t.Errorf("variable %q: %s", v.Name, problem)
		}
	}
}

// ruleExprs returns the expr of every rule in the rules file. The file is
// simple enough YAML (one-line exprs) to read without a YAML library.
func ruleExprs(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("prometheus/sessioncap.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	exprs := make(map[string]string)
	alert := ""
	for line := range strings.SplitSeq(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if a, ok := strings.CutPrefix(line, "- alert: "); ok {
			alert = a
		}
		if x, ok := strings.CutPrefix(line, "expr: "); ok {
			if alert == "" || strings.HasPrefix(x, "|") || strings.HasPrefix(x, ">") {
				t.Fatalf("expr %q: want one-line exprs after '- alert:'", x)
			}
			exprs[alert] = x
		}
	}
	if len(exprs) == 0 {
		t.Fatal("no rules found")
	}
	return exprs
}

func TestRulesQueryExposedMetrics(t *testing.T) {
	exprs := ruleExprs(t)
	e := scrape(t)
	for alert, expr := range exprs {
		for _, problem := range checkExpr(e, expr) {
			t.Errorf("alert %s: %s\n\tin %s", alert, problem, expr)
		}
	}
}

// githubSlug is the anchor GitHub gives a Markdown heading.
func githubSlug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ' || r == '-':
			b.WriteRune('-')
		case r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestRunbookURLsPointAtReadmeSections(t *testing.T) {
	raw, err := os.ReadFile("prometheus/sessioncap.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	anchors := make(map[string]bool)
	for _, doc := range []string{"../README.md", "../.readme-parts/packaging.md"} {
		text, err := os.ReadFile(doc)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(text), "\n") {
			if h, ok := strings.CutPrefix(line, "#"); ok {
				anchors[githubSlug(strings.TrimSpace(strings.TrimLeft(h, "#")))] = true
			}
		}
	}
	if len(anchors) == 0 {
		t.Skip("neither README.md nor .readme-parts/packaging.md found")
	}
	urls := regexp.MustCompile(`runbook_url: (\S+)`).FindAllStringSubmatch(string(raw), -1)
	if len(urls) == 0 {
		t.Fatal("no runbook_url in the rules")
	}
	for _, u := range urls {
		base, anchor, ok := strings.Cut(u[1], "#")
		if !ok || base != "https://github.com/sessioncap/sessioncap" {
			t.Errorf("runbook_url %s: want https://github.com/sessioncap/sessioncap#SECTION", u[1])
			continue
		}
		if !anchors[anchor] {
			t.Errorf("runbook_url %s: no README heading with anchor #%s", u[1], anchor)
		}
	}
}

func TestCheckExprFindsProblems(t *testing.T) {
	e, err := parseExposition(strings.NewReader(`# HELP a_total x
sessioncap_refusals_total{limit="frequency",mode="enforce",stage="connect"} 0
sessioncap_sessions_total 3
`))
	if err != nil {
		t.Fatal(err)
	}
	for expr, want := range map[string][]string{
		`sum by (limit) (rate(sessioncap_refusals_total{job="$job", mode="enforce"}[5m]))`: nil,
		`up{job="sessioncap"} == 0`:                      nil,
		`rate(sessioncap_session_total[5m])`:             {"metric sessioncap_session_total is not exposed"},
		`sessioncap_refusals_total{limit="bogus"}`:       {`sessioncap_refusals_total has no series with limit="bogus"`},
		`sessioncap_sessions_total{what="x"}`:            {"sessioncap_sessions_total has no label what"},
		`sum by (stage, op) (sessioncap_refusals_total)`: {"no metric in the expression has label op"},
	} {
		if got := checkExpr(e, expr); !slices.Equal(got, want) {
			t.Errorf("checkExpr(%s) = %q, want %q", expr, got, want)
		}
	}
}
