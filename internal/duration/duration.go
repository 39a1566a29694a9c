// Package duration parses the durations of sessioncap's configuration, CLI
// and admin API: Go's ("90s", "1h30m", "100ms") and, as Prometheus writes
// them, years, weeks and days ("7d", "2w", "1w3d12h"; a day is 24h, a week
// 7d, a year 365d).
package duration

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Hint is the part of every error that says what a duration looks like.
const Hint = `use a number with a unit such as "90s", "5m", "1h", "7d" or "2w"`

const day = 24 * time.Hour

// long are the units Go's time.ParseDuration lacks, largest first: they may
// lead a duration, in this order, before Go's own units.
var long = []struct {
	unit byte
	d    time.Duration
}{{'y', 365 * day}, {'w', 7 * day}, {'d', day}}

// Parse reads a duration: optional y, w and d parts in that order, each a
// whole number, then optionally anything time.ParseDuration takes.
// "7d", "1w", "1d12h", "90m" and "-1h" parse; "1.5d", "7x" and "" do not.
func Parse(s string) (time.Duration, error) {
	in := s
	s = strings.TrimSpace(s)
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg, s = s[0] == '-', s[1:]
	}
	var total time.Duration
	next := 0 // the index in long the next long part may use
	for s != "" {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 || i == len(s) {
			break
		}
		k := -1
		for j := next; j < len(long); j++ {
			if s[i] == long[j].unit {
				k = j
				break
			}
		}
		if k < 0 {
			break // not a long unit (or one out of order): Go's part
		}
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n > int64(math.MaxInt64/long[k].d) || total > math.MaxInt64-time.Duration(n)*long[k].d {
			return 0, fmt.Errorf("invalid duration %q: too long", in)
		}
		total += time.Duration(n) * long[k].d
		s, next = s[i+1:], k+1
	}
	if s != "" || next == 0 {
		d, err := time.ParseDuration(s)
		if err != nil || s[0] == '-' || s[0] == '+' {
			return 0, fmt.Errorf("invalid duration %q: %s", in, Hint)
		}
		if total > math.MaxInt64-d {
			return 0, fmt.Errorf("invalid duration %q: too long", in)
		}
		total += d
	}
	if neg {
		total = -total
	}
	return total, nil
}

// Format writes d the way Parse reads it, whole days and weeks as such:
// 168h is "1w", 36h is "1d12h", 90m is "1h30m", 0 is "0s".
func Format(d time.Duration) string {
	if d <= 0 || d%time.Second != 0 || d < day {
		return trimGo(d)
	}
	var b strings.Builder
	for _, u := range long[1:] { // weeks and days; a year of 365d reads as 52w1d
		if n := d / u.d; n > 0 {
			fmt.Fprintf(&b, "%d%c", n, u.unit)
			d -= n * u.d
		}
	}
	if d > 0 {
		b.WriteString(trimGo(d))
	}
	return b.String()
}

// trimGo is time.Duration's String without zero minutes and seconds
// ("1h0m0s" is "1h").
func trimGo(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
