package replay

import "math/bits"

// hist is a histogram of non-negative integers with exact buckets below
// 64 and 32 buckets per power of two above (a bucket spans at most 1/32 of
// its values, so a percentile read from it is at most ~3% high). It has a
// fixed size whatever it counts.
type hist struct {
	counts [64 + 57*32]int64
	n      int64
	max    int64
}

func bucketOf(v int64) int {
	if v < 64 {
		return int(max(v, 0))
	}
	k := bits.Len64(uint64(v)) - 1 // 2^k <= v < 2^(k+1), k >= 6
	sub := int(uint64(v)>>(k-5)) & 31
	return 64 + (k-6)*32 + sub
}

// upper is the largest value of bucket i.
func upper(i int) int64 {
	if i < 64 {
		return int64(i)
	}
	k, sub := (i-64)/32+6, (i-64)%32
	return int64(32+sub+1)<<(k-5) - 1
}

func (h *hist) add(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)]++
	h.n++
	h.max = max(h.max, v)
}

// quantile returns the smallest bucket bound with at least q of the
// values at or below it (the exact maximum for q = 1).
func (h *hist) quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	want := int64(q*float64(h.n) + 0.999999)
	want = max(1, min(want, h.n))
	var seen int64
	for i, c := range h.counts {
		if seen += c; seen >= want {
			return min(upper(i), h.max)
		}
	}
	return h.max
}

// above counts the values greater than v.
func (h *hist) above(v int64) int64 {
	var n int64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		lo := int64(0)
		if i > 0 {
			lo = upper(i-1) + 1
		}
		if lo > v {
			n += c
		}
	}
	return n
}
