package duration

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	const day = 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"90s", 90 * time.Second},
		{"1h30m", 90 * time.Minute},
		{"100ms", 100 * time.Millisecond},
		{"0s", 0},
		{"0", 0},
		{"7d", 7 * day},
		{"1w", 7 * day},
		{"2w3d", 17 * day},
		{"1d12h", 36 * time.Hour},
		{"1y", 365 * day},
		{"1y1w1d1h1m1s", 373*day + time.Hour + time.Minute + time.Second},
		{" 6h ", 6 * time.Hour},
		{"-1h", -time.Hour},
		{"-2d", -2 * day},
		{"+1d", day},
	} {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "d", "7", "7x", "1.5d", "1d1w", "1d1d", "1d-2h", "1d+2h", "5 minutes", "--1h", "100000000000w", "106752d", "1y" + strings.Repeat("9", 20) + "s"} {
		if got, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", in, got)
		} else if !strings.Contains(err.Error(), `"`+in+`"`) {
			t.Errorf("Parse(%q): error %q does not name the input", in, err)
		}
	}
	if _, err := Parse("7x"); err == nil || !strings.Contains(err.Error(), Hint) {
		t.Errorf("Parse(7x): %v, want the hint", err)
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"},
		{90 * time.Second, "1m30s"},
		{time.Hour, "1h"},
		{6 * time.Hour, "6h"},
		{90 * time.Minute, "1h30m"},
		{24 * time.Hour, "1d"},
		{36 * time.Hour, "1d12h"},
		{7 * 24 * time.Hour, "1w"},
		{8760 * time.Hour, "52w1d"},
		{100 * time.Millisecond, "100ms"},
	} {
		if got := Format(tc.in); got != tc.want {
			t.Errorf("Format(%v) = %q, want %q", tc.in, got, tc.want)
		}
		if back, err := Parse(Format(tc.in)); err != nil || back != tc.in {
			t.Errorf("Parse(Format(%v)) = %v, %v", tc.in, back, err)
		}
	}
}
