package replay

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromium finds Debian's chromium. Without it the test is skipped, except
// in CI (CI=true), which installs it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (.ci/run installs Debian's chromium)")
	}
	t.Skip("chromium is not installed")
	return ""
}

// TestHTMLReportRendersInChromium: the report of a recorded log, written
// with a refused key that is hostile HTML, renders in headless Chromium
// with one histogram per quantity (bars, the cap line where a cap is
// set), the rules table with the escaped key, and nothing loaded from
// elsewhere.
func TestHTMLReportRendersInChromium(t *testing.T) {
	bin := chromium(t)
	data, err := os.ReadFile("testdata/postfix-monitor.log")
	if err != nil {
		t.Fatal(err)
	}
	rep := replayString(t, rulesOf(t, "testdata/monitor.toml"), string(data))
	evil := `<script>document.title="pwned"</script><img src=x>`
	rep.rule("quota evil").keys = map[string]int64{evil: 1}
	rep.finishRules()
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	f, err := os.Create(page)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteHTML(f, "monitor.toml"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	src, _ := os.ReadFile(page)
	for _, m := range regexp.MustCompile(`(?i)<[a-z][^>]*\s(src|href)\s*=[^>]*>|url\(|@import`).FindAllStringSubmatch(string(src), -1) {
		t.Errorf("the page loads %s", m[0])
	}
	if strings.Contains(string(src), "<script") {
		t.Error("the hostile key reached the page unescaped")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--dump-dom", "file://"+page)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v\n%s", err, stderrOf(err))
	}
	dom := string(out)
	plots := regexp.MustCompile(`<div class="plot" data-quantity="([^"]+)">`).FindAllStringSubmatch(dom, -1)
	if len(plots) != len(rep.Quantities) {
		t.Fatalf("%d plots in the rendered page, want %d", len(plots), len(rep.Quantities))
	}
	chunks := strings.Split(dom, `<div class="plot"`)[1:]
	for i, q := range rep.Quantities {
		c := chunks[i]
		if end := strings.Index(c, "</div>"); end >= 0 {
			c = c[:end]
		}
		if q.Count == 0 {
			continue
		}
		if !strings.Contains(c, "<svg") || strings.Count(c, `class="bar"`) == 0 {
			t.Errorf("%s: no bars rendered", q.Name)
		}
		if q.Cap > 0 && !strings.Contains(c, `class="cap"`) {
			t.Errorf("%s: cap %d not drawn", q.Name, q.Cap)
		}
	}
	if !strings.Contains(dom, "session_recipients") || !strings.Contains(dom, "127.0.0.1") {
		t.Error("the rules table is missing")
	}
	if strings.Contains(dom, "pwned") && strings.Contains(dom, "<title>pwned") {
		t.Error("the hostile key ran as a script")
	}
	if !strings.Contains(dom, "&lt;script&gt;") {
		t.Error("the hostile key is not shown escaped")
	}
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
