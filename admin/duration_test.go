package admin

import (
	"context"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
)

// TestBanTakesDaysAndWeeks: POST /v1/ban reads "for" as the configuration
// and the CLI do, days and weeks included.
func TestBanTakesDaysAndWeeks(t *testing.T) {
	var got []time.Duration
	b := &fakeBackend{ban: func(_ context.Context, target string, d time.Duration, _ string) (counters.Ban, error) {
		got = append(got, d)
		return counters.Ban{Key: "freq:" + target}, nil
	}}
	spec, _ := serveUnix(t, b)
	for _, f := range []string{"7d", "2w", "1w3d12h", "90m"} {
		if code, body := rawRequest(t, spec, "POST", "/v1/ban", "application/json", `{"target":"192.0.2.1","for":"`+f+`"}`); code != 200 {
			t.Errorf("for %q: %d %s", f, code, body)
		}
	}
	want := []time.Duration{7 * 24 * time.Hour, 14 * 24 * time.Hour, 10*24*time.Hour + 12*time.Hour, 90 * time.Minute}
	if len(got) != len(want) {
		t.Fatalf("backend got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("backend got %v, want %v", got, want)
		}
	}
}
