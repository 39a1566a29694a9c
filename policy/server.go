// Package policy is sessioncap's second front-end: a Postfix SMTPD policy
// delegation server (check_policy_service, SMTPD_POLICY_README) that turns
// policy requests into the decisions of package limits, with the store,
// replies, logs and metrics the milter uses.
//
// # Sessions
//
// Postfix keeps one policy connection per smtpd process and reuses it for
// the SMTP sessions that process serves one after another; it closes it
// after smtpd_policy_service_max_idle (300s) idle or max_ttl (1000s), and on
// errors, also in the middle of an SMTP session, and then opens a new one.
// State kept per policy connection would be lost then, so a session is
// identified server-wide by the SMTP connection's endpoints as Postfix
// reports them: client_address, client_port, server_address, server_port
// (Postfix 3.0 and 3.2 and later). No two open TCP connections share them.
// A later SMTP connection that reuses all four is told apart as identify.go
// explains: at its CONNECT, when its smtpd process's policy connection last
// spoke for other endpoints (one smtpd process serves one session at a
// time, so its previous session has ended and leaves the table), or by the
// instance attribute (pid.seconds.microseconds.seqno, hex, at RCPT and
// END-OF-MESSAGE; seqno counts the session's transactions from 0). A MAIL
// that could be the session's next or a new one's first (no CONNECT
// requests, no instance at MAIL) is answered DUNNO and decided at its
// first RCPT. Sessions live in a table bounded by MaxSessions (the least
// recently seen one that no open policy connection is serving is evicted)
// and are forgotten after SessionIdle without a request.
// A request without a usable client port (Postfix before 3.0, or an smtpd
// not on a socket, which reports port 0) is counted per policy connection.
//
// A session is counted against the frequency rule at the first request seen
// of it; transactions are told apart by instance. Messages and bytes are
// counted at END-OF-MESSAGE, whose size attribute is the real size of the
// message; at MAIL and at the first RCPT of a transaction, size is the SIZE=
// of MAIL FROM, used for the byte cap's prediction. Recipients are counted
// at RCPT and corrected at END-OF-MESSAGE from recipient_count (what Postfix
// accepted after its other restrictions).
//
// The deny list is checked with the frequency rule at the first request of
// a session, and its reply is given to every later request of it. The
// sender-networks rule and overrides on users and sender domains apply at
// the first request of each transaction, from the sender and sasl_username
// attributes.
//
// # What the policy path cannot do
//
// Postfix asks nothing when a session ends, so concurrency caps cannot be
// enforced here (leave them to smtpd_client_connection_count_limit and
// anvil), a policy server cannot add headers (tag mode is logged and
// counted only), and it never hears of recipients Postfix rejected before
// asking it (the errors rule).
package policy

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/internal/netguard"
	"github.com/sessioncap/sessioncap/limits"
)

// Store keeps the state that outlives a session (see engine.Store).
type Store = engine.Store

// Defaults of Config.
const (
	// DefaultReadTimeout is how long a policy connection may wait for its
	// next request. Postfix closes idle policy connections itself after
	// smtpd_policy_service_max_idle (300s), so a connection idle for longer
	// is not a live Postfix's: this reclaims it soon after.
	DefaultReadTimeout = 330 * time.Second
	// DefaultMaxConnections bounds open policy connections: Postfix opens
	// one per smtpd process (default_process_limit is 100).
	DefaultMaxConnections = 1000
	// DefaultMaxConnectionsPerPeer bounds the open policy connections of
	// one peer: a TCP client address, or the user of a unix socket peer.
	DefaultMaxConnectionsPerPeer = 500
	// DefaultFirstRequestTimeout is how long a new policy connection may
	// wait before its first request: Postfix connects when it has one to
	// send.
	DefaultFirstRequestTimeout = 10 * time.Second
	// DefaultMaxSessions bounds the sessions kept (about 300 bytes each).
	DefaultMaxSessions = 100_000
	// DefaultSessionIdle is how long a session is kept without a request: a
	// large message can take long between its RCPT and its END-OF-MESSAGE.
	DefaultSessionIdle = time.Hour
)

// requestTimeout bounds the rest of a request once its first line is in:
// Postfix writes a request at once.
const requestTimeout = 10 * time.Second

// writeTimeout bounds writing one reply.
const writeTimeout = 10 * time.Second

// Config is what a Server needs.
type Config struct {
	Rules   *limits.Rules
	Store   Store
	Metrics *Metrics
	Logger  *slog.Logger
	Now     func() time.Time // time.Now when nil
	// StoreTimeout bounds one store call (default 1s).
	StoreTimeout time.Duration
	// Engine, when set, is shared with other front-ends: its rules, store
	// and clock are used, and Rules, Store, Now and StoreTimeout are ignored.
	Engine *engine.Engine
	// Allow lists the networks whose TCP connections may send policy
	// requests; others are closed at accept. nil means loopback only.
	// Unix socket peers are governed by the socket file's mode.
	Allow []netip.Prefix
	// ReadTimeout is how long a policy connection may wait for its next
	// request (default DefaultReadTimeout).
	ReadTimeout time.Duration
	// FirstRequestTimeout is how long a new connection may wait before its
	// first request (default DefaultFirstRequestTimeout).
	FirstRequestTimeout time.Duration
	// MaxConnections bounds open policy connections, MaxConnectionsPerPeer
	// those of one peer (defaults DefaultMaxConnections and
	// DefaultMaxConnectionsPerPeer). A connection beyond either closes the
	// idle connection (of that peer, for the second) that has waited
	// longest, those that never sent a request first; only when none is
	// idle is the new one refused.
	MaxConnections        int
	MaxConnectionsPerPeer int
	MaxSessions           int           // default DefaultMaxSessions
	SessionIdle           time.Duration // default DefaultSessionIdle
}

// Server is a Postfix policy server enforcing sessioncap's limits.
type Server struct {
	eng          *engine.Engine
	metrics      *Metrics
	log          *slog.Logger
	allow        []netip.Prefix
	readTimeout  time.Duration
	firstTimeout time.Duration
	maxConns     int
	maxPerPeer   int
	sessions     *table

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	perPeer   map[string]int // open connections by peer
	closing   atomic.Bool
	done      chan struct{} // closed by Shutdown and Close
	closeOnce sync.Once
	wg        sync.WaitGroup // connection goroutines

	protoLog  netguard.LogLimiter
	refuseLog netguard.LogLimiter
	acceptLog netguard.LogLimiter
	inputLog  netguard.LogLimiter
}

// NewServer returns a server; call Serve to accept policy connections.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Metrics == nil {
		return nil, errors.New("policy: Metrics are required")
	}
	eng := cfg.Engine
	if eng == nil {
		if cfg.Rules == nil || cfg.Store == nil {
			return nil, errors.New("policy: Rules and Store are required")
		}
		var err error
		eng, err = engine.New(engine.Config{Rules: cfg.Rules, Store: cfg.Store, Metrics: cfg.Metrics.shared,
			Logger: cfg.Logger, Now: cfg.Now, StoreTimeout: cfg.StoreTimeout})
		if err != nil {
			return nil, err
		}
	}
	s := &Server{
		eng: eng, metrics: cfg.Metrics, log: cfg.Logger, allow: cfg.Allow,
		readTimeout: cfg.ReadTimeout, firstTimeout: cfg.FirstRequestTimeout,
		maxConns: cfg.MaxConnections, maxPerPeer: cfg.MaxConnectionsPerPeer,
		listeners: make(map[net.Listener]struct{}), conns: make(map[*conn]struct{}), perPeer: make(map[string]int),
		done:     make(chan struct{}),
		protoLog: netguard.LogLimiter{Every: time.Second}, refuseLog: netguard.LogLimiter{Every: 10 * time.Second},
		acceptLog: netguard.LogLimiter{Every: 10 * time.Second}, inputLog: netguard.LogLimiter{Every: 10 * time.Second},
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "policy")
	if s.allow == nil {
		s.allow = netguard.Loopback
	}
	if s.readTimeout <= 0 {
		s.readTimeout = DefaultReadTimeout
	}
	if s.maxConns <= 0 {
		s.maxConns = DefaultMaxConnections
	}
	if s.maxPerPeer <= 0 {
		s.maxPerPeer = DefaultMaxConnectionsPerPeer
	}
	if s.firstTimeout <= 0 {
		s.firstTimeout = DefaultFirstRequestTimeout
	}
	maxSessions, idle := cfg.MaxSessions, cfg.SessionIdle
	if maxSessions <= 0 {
		maxSessions = DefaultMaxSessions
	}
	if idle <= 0 {
		idle = DefaultSessionIdle
	}
	s.sessions = newTable(maxSessions, idle, s.metrics)
	return s, nil
}

// SetRules atomically replaces the rules (see engine.Engine.SetRules).
// Sessions already seen keep the rules they started with.
func (s *Server) SetRules(r *limits.Rules) error { return s.eng.SetRules(r) }

// Rules returns the rules new sessions get.
func (s *Server) Rules() *limits.Rules { return s.eng.Rules() }

// Sessions returns the number of sessions the server keeps counts for.
func (s *Server) Sessions() int { return s.sessions.len() }

// Serve accepts policy connections on ln until Shutdown or Close, and then
// returns nil. Peers outside Config.Allow are closed at once; a connection
// beyond MaxConnections or MaxConnectionsPerPeer closes an idle one (see
// makeRoom) or, when none is idle, is closed; accept errors such as EMFILE
// are retried after a backoff.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		_ = ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) || !netguard.RetryableAcceptError(err) {
				return err
			}
			delay = min(max(2*delay, netguard.AcceptBackoffMin), netguard.AcceptBackoffMax)
			s.metrics.acceptErrors.Inc()
			if ok, suppressed := s.acceptLog.Allow(time.Now()); ok {
				s.log.Error("accept failed; retrying", "err", err, "retry_in", delay.String(), "suppressed", suppressed)
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return nil
			}
			continue
		}
		delay = 0
		if !netguard.Allowed(s.allow, nc.RemoteAddr()) {
			s.refuseConn(nc, refusedAllow, "refused policy connection from outside [policy] allow")
			continue
		}
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closing.Load() {
			s.mu.Unlock()
			_ = nc.Close()
			return nil
		}
		if reason := s.makeRoom(c.peer); reason != "" {
			s.mu.Unlock()
			s.refuseConn(nc, reason, "refused policy connection: too many open, none idle")
			continue
		}
		s.conns[c] = struct{}{}
		s.perPeer[c.peer]++
		s.metrics.conns.Set(float64(len(s.conns)))
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// makeRoom makes room for a new connection of peer: beyond
// MaxConnectionsPerPeer it closes that peer's idle connection that waited
// longest, beyond MaxConnections anyone's, those that never sent a request
// first (Postfix connects when it has a request to send, and opens a new
// connection when it finds its idle one closed). It returns the reason to
// refuse the new connection when there is no idle one to close. The caller
// holds s.mu.
func (s *Server) makeRoom(peer string) (refuse string) {
	if s.perPeer[peer] >= s.maxPerPeer {
		if !s.evictIdle(peer) {
			return refusedPeerLimit
		}
	} else if len(s.conns) >= s.maxConns {
		if !s.evictIdle("") {
			return refusedLimit
		}
	}
	return ""
}

// evictIdle closes the idle connection (of peer, unless "") that waited
// longest, preferring those that never sent a request; it reports whether
// there was one. The connection leaves s.conns when its goroutine ends.
func (s *Server) evictIdle(peer string) bool {
	var victim *conn
	var vServed bool
	var vSince time.Time
	for c := range s.conns {
		if peer != "" && c.peer != peer {
			continue
		}
		idle, served, since := c.idleState()
		if !idle {
			continue
		}
		if victim == nil || (!served && vServed) || (served == vServed && since.Before(vSince)) {
			victim, vServed, vSince = c, served, since
		}
	}
	if victim == nil {
		return false
	}
	if !victim.evict() {
		return false
	}
	s.metrics.connEvictions.Inc()
	return true
}

func (s *Server) refuseConn(nc net.Conn, reason, msg string) {
	s.metrics.refusedConns.WithLabelValues(reason).Inc()
	if ok, suppressed := s.refuseLog.Allow(time.Now()); ok {
		s.log.Warn(msg, "remote", nc.RemoteAddr().String(), "open", s.openConns(), "suppressed", suppressed)
	}
	_ = nc.Close()
}

func (s *Server) openConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// stop closes the listeners and marks the server closing.
func (s *Server) stop() {
	s.closing.Store(true)
	s.closeOnce.Do(func() { close(s.done) })
	s.mu.Lock()
	for ln := range s.listeners {
		_ = ln.Close()
	}
	s.mu.Unlock()
}

// Shutdown stops accepting connections, answers the requests in progress,
// closes every connection as soon as it waits for its next request, and
// waits for that until ctx is done; then it closes the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop()
	s.mu.Lock()
	for c := range s.conns {
		c.interruptIdle()
	}
	s.mu.Unlock()
	idle := make(chan struct{})
	go func() { s.wg.Wait(); close(idle) }()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		_ = s.Close()
		return ctx.Err()
	}
}

// Close closes listeners and every connection at once.
func (s *Server) Close() error {
	s.stop()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
	return nil
}

// conn is one policy connection from one smtpd process.
type conn struct {
	srv    *Server
	nc     net.Conn
	br     *bufio.Reader
	req    request
	out    []byte // the reply, built in place and written at once
	remote string

	peer string // what MaxConnectionsPerPeer counts by

	mu        sync.Mutex // guards the fields below against Shutdown and evictIdle
	idle      bool       // waiting for the first line of a request
	evicted   bool       // closed to make room for another
	idleSince time.Time  // when it began to wait
	served    bool       // a request was answered

	fallback *session // for requests without a usable client port
	cur      *session // the session of the last request (guarded by the table's lock)

	clientAddr, serverAddr addrCache
}

func newConn(s *Server, nc net.Conn) *conn {
	remote := "unix"
	if a := nc.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		remote = a.String()
	}
	var peer string
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		peer = a.AddrPort().Addr().Unmap().String()
	} else {
		peer = unixPeer(nc)
	}
	return &conn{srv: s, nc: nc, br: bufio.NewReaderSize(nc, maxLine), out: make([]byte, 0, 256), remote: remote, peer: peer,
		idle: true, idleSince: time.Now()}
}

// idleState reports whether c waits for a request (and is not being
// closed), whether it answered one, and since when it waits.
func (c *conn) idleState() (idle, served bool, since time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.idle && !c.evicted, c.served, c.idleSince
}

// evict ends c's wait for a request to make room for another connection;
// false when c is no longer idle.
func (c *conn) evict() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.idle || c.evicted {
		return false
	}
	c.evicted = true
	_ = c.nc.SetReadDeadline(time.Now())
	return true
}

// serve answers requests until the peer hangs up, breaks the protocol, or
// the server shuts down.
func (c *conn) serve() {
	defer func() {
		_ = c.nc.Close()
		c.release()
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		if c.srv.perPeer[c.peer]--; c.srv.perPeer[c.peer] <= 0 {
			delete(c.srv.perPeer, c.peer)
		}
		c.srv.metrics.conns.Set(float64(len(c.srv.conns)))
		c.srv.mu.Unlock()
		c.srv.wg.Done()
	}()
	for {
		if !c.waitIdle() {
			return
		}
		err := c.req.read(c.br, c.started)
		if err != nil {
			c.readFailed(err)
			return
		}
		r := c.srv.handle(&c.req, c)
		if err := c.reply(r); err != nil {
			return
		}
		c.mu.Lock()
		c.served = true
		c.mu.Unlock()
	}
}

// waitIdle marks the connection idle and sets the deadline of the wait for
// the next request; false when the server is shutting down.
func (c *conn) waitIdle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.evicted || c.srv.closing.Load() && c.br.Buffered() == 0 {
		return false
	}
	now := time.Now()
	timeout := c.srv.firstTimeout // from the accept (idleSince)
	if c.served {
		timeout, c.idleSince = c.srv.readTimeout, now
	}
	c.idle = true
	_ = c.nc.SetReadDeadline(c.idleSince.Add(timeout))
	return true
}

// started is called when the first line of a request is in.
func (c *conn) started() {
	c.mu.Lock()
	c.idle = false
	_ = c.nc.SetReadDeadline(time.Now().Add(requestTimeout))
	c.mu.Unlock()
}

// interruptIdle ends the wait of an idle connection (at shutdown).
func (c *conn) interruptIdle() {
	c.mu.Lock()
	if c.idle {
		_ = c.nc.SetReadDeadline(time.Now())
	}
	c.mu.Unlock()
}

// readFailed classifies why a connection ends: a clean hang-up, a shutdown,
// or a protocol error, which is counted and logged (rate-limited).
func (c *conn) readFailed(err error) {
	var pe *protocolError
	switch {
	case errors.Is(err, errNoRequest):
		return
	case errors.As(err, &pe):
	case errors.Is(err, errIdle):
		c.mu.Lock()
		evicted := c.evicted
		c.mu.Unlock()
		if c.srv.closing.Load() || evicted {
			return
		}
		pe = &protocolError{reasonReadTimeout}
	default:
		return // reset by the peer, closed by Close: nothing to count
	}
	c.srv.metrics.protocolErrors.WithLabelValues(pe.reason).Inc()
	if ok, suppressed := c.srv.protoLog.Allow(time.Now()); ok {
		c.srv.log.Warn("closing policy connection: protocol error", "reason", pe.reason, "remote", c.remote, "suppressed", suppressed)
	}
}

// reply writes action=DUNNO, or the refusal as action=CODE X.Y.Z text.
// A 421 makes Postfix reply and disconnect the SMTP client (access(5)).
func (c *conn) reply(r *limits.Refusal) error {
	b := append(c.out[:0], "action="...)
	if r == nil {
		b = append(b, "DUNNO"...)
	} else {
		b = strconv.AppendInt(b, int64(r.Code), 10)
		b = append(b, ' ')
		if r.Enhanced != "" {
			b = append(b, r.Enhanced...)
			b = append(b, ' ')
		}
		b = append(b, r.Text...)
	}
	b = append(b, '\n', '\n')
	c.out = b
	_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.nc.Write(b)
	return err
}
