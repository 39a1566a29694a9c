package limits_test

import (
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/limits"
)

// TestApplySubMillisecondWindow: a window under 1 ms counts as 1 ms, as
// the Redis store counts it: the first hit is counted, not banned.
func TestApplySubMillisecondWindow(t *testing.T) {
	r := limits.Rate{Max: 30, Window: 500 * time.Microsecond, Ban: 10 * time.Minute, Reason: "frequency"}
	var w limits.Window
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC).UnixMilli()
	h, until := limits.Apply(&w, 0, now, 1, r)
	if h.Crossed || until != 0 || h.Count != 1 {
		t.Fatalf("first hit under a 500µs window: %+v, ban until %d; want counted once, not banned", h, until)
	}
	for i := 2; i <= 30; i++ {
		if h, until = limits.Apply(&w, 0, now, 1, r); h.Crossed || until != 0 {
			t.Fatalf("hit %d within one millisecond: %+v; want admitted up to 30", i, h)
		}
	}
	if h, until = limits.Apply(&w, 0, now, 1, r); !h.Crossed || until == 0 {
		t.Fatalf("hit 31 within one millisecond: %+v; want it over the limit", h)
	}
}
