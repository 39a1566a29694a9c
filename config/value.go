package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	dur "github.com/sessioncap/sessioncap/internal/duration"
)

// value is one configuration value as read from TOML: whether the key was
// set, and the parse error if it was set badly. Decoding never stops at a bad
// value, so every error of a file is reported at once.
type value[T any] struct {
	v   T
	set bool
	err error
}

// count is a non-negative integer; 0 disables the limit it sets.
type count int64

// byteSize is a size in bytes: a TOML integer or a string with a unit
// ("50MB", "10MiB").
type byteSize int64

// duration must be written as a string ("90s", "7d"): a bare TOML integer
// would silently be nanoseconds.
type duration time.Duration

// UnmarshalTOML implements toml.Unmarshaler. A list's err joins the errors
// of every bad item (errors.Join), each reported on its own.
func (o *value[T]) UnmarshalTOML(data any) error {
	o.set = true
	o.err = parseInto(&o.v, data)
	return nil
}

func (o *value[T]) problem() error { return o.err }

func (o *value[T]) isSet() bool { return o.set }

// get returns the value if set and valid, else def.
func (o *value[T]) get(def T) T {
	if o.set && o.err == nil {
		return o.v
	}
	return def
}

func parseInto(dst, data any) error {
	switch d := dst.(type) {
	case *string:
		s, ok := data.(string)
		if !ok {
			return typeError("a string", data)
		}
		*d = s
	case *bool:
		b, ok := data.(bool)
		if !ok {
			return typeError("true or false", data)
		}
		*d = b
	case *int64:
		n, ok := data.(int64)
		if !ok {
			return typeError("an integer", data)
		}
		*d = n
	case *count:
		n, ok := data.(int64)
		if !ok {
			return typeError("a whole number (0 disables the limit)", data)
		}
		if n < 0 {
			return fmt.Errorf("must not be negative (0 disables the limit), got %d", n)
		}
		*d = count(n)
	case *byteSize:
		n, err := parseByteSize(data)
		if err != nil {
			return err
		}
		*d = byteSize(n)
	case *duration:
		s, ok := data.(string)
		if !ok {
			if _, isInt := data.(int64); isInt {
				return fmt.Errorf("a duration must be a string with a unit such as \"90s\" or \"5m\", got the bare number %v", data)
			}
			return typeError("a duration string such as \"90s\"", data)
		}
		t, err := dur.Parse(s)
		if err != nil {
			return err
		}
		if t < 0 {
			return fmt.Errorf("must not be negative, got %q", s)
		}
		*d = duration(t)
	case *[]string:
		list, ok := data.([]any)
		if !ok {
			return typeError("a list of strings", data)
		}
		out := make([]string, 0, len(list))
		var errs []error
		for _, item := range list {
			s, ok := item.(string)
			if !ok {
				errs = append(errs, typeError("a string", item))
				continue
			}
			out = append(out, s)
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		*d = out
	case *[]netip.Prefix:
		list, ok := data.([]any)
		if !ok {
			return typeError("a list of networks such as [\"192.0.2.0/24\", \"2001:db8::/32\"]", data)
		}
		out := make([]netip.Prefix, 0, len(list))
		var errs []error
		for _, item := range list {
			s, ok := item.(string)
			if !ok {
				errs = append(errs, typeError("a network string such as \"192.0.2.0/24\"", item))
				continue
			}
			p, err := parseNetwork(s)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out = append(out, p)
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		*d = out
	default:
		return fmt.Errorf("internal: no parser for %T", dst)
	}
	return nil
}

func typeError(want string, got any) error {
	return fmt.Errorf("must be %s, got %s", want, tomlType(got))
}

func tomlType(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", x)
	case int64:
		return fmt.Sprintf("the integer %d", x)
	case float64:
		return fmt.Sprintf("the float %v", x)
	case bool:
		return fmt.Sprintf("%v", x)
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// parseNetwork accepts a CIDR or a single address (as /32 or /128). Host
// bits must be zero: "10.1.2.3/8" is most likely a typo.
func parseNetwork(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid network %q: want an address or CIDR such as \"192.0.2.0/24\"", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid network %q: want a CIDR such as \"192.0.2.0/24\"", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("network %q has host bits set; did you mean %q?", s, p.Masked().String())
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("network %q is IPv4-mapped IPv6; write the IPv4 network instead", s)
	}
	return p, nil
}

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1e3}, {"m", 1e6}, {"g", 1e9}, {"b", 1},
}

func parseByteSize(data any) (int64, error) {
	switch x := data.(type) {
	case int64:
		if x < 0 {
			return 0, fmt.Errorf("must not be negative (0 disables the limit), got %d", x)
		}
		return x, nil
	case string:
		s := strings.ToLower(strings.TrimSpace(x))
		mult := 1.0
		for _, u := range sizeUnits {
			if strings.HasSuffix(s, u.suffix) {
				s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
				break
			}
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, fmt.Errorf("invalid size %q: use bytes or a number with a unit such as \"50MB\" or \"10MiB\"", x)
		}
		if f < 0 {
			return 0, fmt.Errorf("must not be negative, got %q", x)
		}
		if f*mult > math.MaxInt64/2 {
			return 0, fmt.Errorf("size %q is too large", x)
		}
		return int64(f * mult), nil
	default:
		return 0, typeError("a size: bytes as an integer or a string such as \"50MB\"", data)
	}
}

// prefixList is a list of networks.
type prefixList = []netip.Prefix

// stringList is a list of strings.
type stringList = []string

// ParseDuration reads a duration as the configuration does: Go's ("90s",
// "1h30m") or with days and weeks as Prometheus writes them ("7d", "2w").
func ParseDuration(s string) (time.Duration, error) { return dur.Parse(s) }

// eachError splits an error joined by errors.Join into its parts.
func eachError(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
