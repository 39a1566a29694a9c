// Package netguard holds what sessioncap's socket servers need to face
// hostile peers: the allow list of TCP peers, which accept errors are worth
// retrying, and a log limiter so that a flood of bad input writes a bounded
// number of log lines.
package netguard

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Loopback is the default allow list: only local processes.
var Loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// Allowed reports whether a peer's address is in allow. Unix socket peers
// are governed by the socket file's mode and always pass.
func Allowed(allow []netip.Prefix, remote net.Addr) bool {
	ta, ok := remote.(*net.TCPAddr)
	if !ok {
		return true
	}
	a, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	a = a.Unmap()
	for _, p := range allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Accept backoff, as net/http's Server.Serve does it.
const (
	AcceptBackoffMin = 5 * time.Millisecond
	AcceptBackoffMax = time.Second
)

// RetryableAcceptError reports whether accept may succeed if tried again:
// resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM), a connection that
// died before it was accepted (ECONNABORTED, EPROTO), a firewall verdict
// (EPERM on Linux), an interrupted call, or anything the net package marks
// temporary.
func RetryableAcceptError(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
			syscall.ECONNABORTED, syscall.EPROTO, syscall.EPERM, syscall.EINTR, syscall.EAGAIN:
			return true
		}
	}
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// LogLimiter lets one log line through per interval and counts the rest.
// It reads the wall clock only to space out log lines.
type LogLimiter struct {
	Every      time.Duration
	mu         sync.Mutex
	next       time.Time
	suppressed int
}

// Allow reports whether to log now and how many lines were held back since
// the last one.
func (l *LogLimiter) Allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.suppressed, l.next = 0, now.Add(l.Every)
	return true, n
}
