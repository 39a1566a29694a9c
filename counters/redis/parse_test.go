package redisstore

import (
	"strconv"
	"testing"

	"github.com/sessioncap/sessioncap/counters"
)

// Ban details come back from Redis: a malformed value is an error, never a
// panic, and a well-formed one decodes to what the script wrote.
func FuzzParseBan(f *testing.F) {
	f.Add(int64(1764676800000), "mx-a", "frequency")
	f.Add(int64(0), "", "")
	f.Add(int64(-1), "host with spaces", "reason 7 x")
	f.Fuzz(func(t *testing.T, since int64, host, reason string) {
		info := strconv.FormatInt(since, 10) + " " + strconv.Itoa(len(host)) + " " + host + reason
		b, err := parseBan("k", 5, info)
		origin, text := counters.SplitReason(reason)
		if err != nil || b.Host != host || b.Origin != origin || b.Reason != text || b.Since.UnixMilli() != since || b.Until.UnixMilli() != 5 {
			t.Fatalf("parseBan(%q) = %+v, %v", info, b, err)
		}
		for i := 0; i <= len(info); i++ { // any prefix or mangling: no panic
			parseBan("k", 5, info[:i])
			parseBan("k", 5, info[i:])
		}
	})
}
