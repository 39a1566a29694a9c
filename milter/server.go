// Package milter adapts go-milter's per-session callbacks to the decisions of
// package limits: it keeps one SMTP session's counts, asks the store at
// connect, and turns refusals into SMTP replies at transaction boundaries.
package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/limits"
)

// Store keeps the state that outlives a session: sliding windows and bans
// per key. counters.Store implements it (memory, Redis, or Redis with a local
// fallback). counters.ErrUnavailable from it (store on_error = "tempfail")
// makes the connection answer 421 at connect; any other error lets the
// connection through.
type Store interface {
	// Hit is the stores' atomic primitive (see counters.Store).
	Hit(ctx context.Context, key string, n int64, r limits.Rate) (limits.Hit, error)
}

// Config is what a Server needs.
type Config struct {
	Rules   *limits.Rules
	Store   Store
	Metrics *Metrics
	Logger  *slog.Logger
	Now     func() time.Time // time.Now when nil
	// StoreTimeout bounds one store call (default 1s); on error or timeout
	// the connection is let through and the error is logged and counted.
	StoreTimeout time.Duration
	// Allow lists the networks whose TCP connections may speak the milter
	// protocol; others are closed at accept. nil means loopback only
	// (127.0.0.0/8, ::1/128). Unix socket peers are governed by the socket
	// file's mode.
	Allow []netip.Prefix
	// ReadTimeout is how long a negotiated milter connection may stay silent
	// before it is closed (default DefaultReadTimeout).
	ReadTimeout time.Duration
}

// Server is a milter server enforcing sessioncap's limits.
type Server struct {
	mu           sync.Mutex // serialises SetRules
	rules        atomic.Pointer[limits.Rules]
	prevRules    atomic.Pointer[limits.Rules] // the rules before the last SetRules
	legacy       atomic.Pointer[[]legacyKeys] // prefix lengths of earlier rules whose bans may still be in force
	store        Store
	leases       *counters.Leases
	metrics      *Metrics
	log          *slog.Logger
	now          func() time.Time
	storeTimeout time.Duration
	srv          *gomilter.Server
	guard        *guard
	// sizeMacro is what the MTAs were seen to do with the {msg_size}
	// macro at end of message (see sizeMacroState).
	sizeMacro atomic.Int32
}

// sizeMacroState: whether the MTAs connected to this server send
// {msg_size} at end of message, learned from the messages they send.
//
// Postfix and Sendmail offer identical option negotiations (version 6,
// actions 0x1ff, protocol 0x1fffff), so which MTA connects is unknown when the
// milter must choose whether to have headers and body sent. A byte cap
// starts with the stream (sizeUnseen); the first end of message that carries
// {msg_size} (Sendmail, which sessioncap asks for it) switches new milter
// connections to no headers and no body: the MTA then skips its largest
// milter cost. An end of message without it (Postfix never sends it) pins
// the stream for good (sizeAbsent), so a server shared by both MTAs counts
// bodies, after at most one message counted as 0 bytes.
const (
	sizeUnseen int32 = iota // no end of message yet: stream
	sizeMacro               // every end of message so far carried {msg_size}: no stream
	sizeAbsent              // an MTA without {msg_size} connects: stream
)

// macroMsgSize is Sendmail's message size macro: at MAIL the SIZE= value, at
// end of message the size Sendmail counted, headers included.
const macroMsgSize gomilter.MacroName = "{msg_size}"

// legacyKeys are the prefix lengths of rules replaced by a reload, kept
// until the longest ban they could have keyed has ended: a reload that
// changes addresses.ipv4_prefix or ipv6_prefix must not lift bans.
type legacyKeys struct {
	rules *limits.Rules
	until time.Time
}

// macros are requested from the MTA. Postfix sends exactly the requested
// list, and does not send {client_addr} unless asked.
var macros = map[gomilter.MacroStage][]gomilter.MacroName{
	gomilter.StageConnect: {gomilter.MacroClientAddr},
	gomilter.StageMail:    {gomilter.MacroQueueId, gomilter.MacroAuthAuthen},
	gomilter.StageRcpt:    {gomilter.MacroQueueId, gomilter.MacroRcptMailer},
	gomilter.StageEOM:     {gomilter.MacroQueueId, macroMsgSize},
}

// NewServer returns a server; call Serve to accept MTA connections.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Rules == nil || cfg.Store == nil || cfg.Metrics == nil {
		return nil, errors.New("milter: Rules, Store and Metrics are required")
	}
	if err := cfg.Rules.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		store:        cfg.Store,
		leases:       counters.NewLeases(),
		metrics:      cfg.Metrics,
		log:          cfg.Logger,
		now:          cfg.Now,
		storeTimeout: cfg.StoreTimeout,
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.storeTimeout <= 0 {
		s.storeTimeout = time.Second
	}
	s.rules.Store(cfg.Rules)
	s.guard = newGuard(cfg, s.log)
	opts := []gomilter.Option{
		gomilter.WithDynamicMilter(s.newSession),
		gomilter.WithNegotiationCallback(s.negotiate),
		gomilter.WithActions(0),
	}
	for stage, names := range macros {
		opts = append(opts, gomilter.WithMacroRequest(stage, names))
	}
	s.srv = gomilter.NewServer(opts...)
	return s, nil
}

// SetRules atomically replaces the rules. Sessions already connected keep the
// rules they started with; new sessions get r. When r keys addresses with
// other prefix lengths, bans keyed under the old lengths stay in force until
// they end.
func (s *Server) SetRules(r *limits.Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.rules.Load()
	now := s.now()
	var keep []legacyKeys
	if l := s.legacy.Load(); l != nil {
		for _, k := range *l {
			if k.until.After(now) && !samePrefixes(k.rules, r) {
				keep = append(keep, k)
			}
		}
	}
	if !samePrefixes(old, r) && old.LongestBan() > 0 {
		keep = append(keep, legacyKeys{rules: old, until: now.Add(old.LongestBan())})
	}
	s.legacy.Store(&keep)
	s.prevRules.Store(old)
	s.rules.Store(r)
	return nil
}

func samePrefixes(a, b *limits.Rules) bool {
	return a.IPv4Prefix == b.IPv4Prefix && a.IPv6Prefix == b.IPv6Prefix
}

// Rules returns the rules new sessions get.
func (s *Server) Rules() *limits.Rules { return s.rules.Load() }

// Serve accepts MTA connections on ln until Shutdown or Close. Accepted
// connections pass the guard (see guard.go): peers outside Config.Allow are
// closed, every packet is checked and bounded in size and time before
// go-milter sees it, and accept errors such as EMFILE are retried.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(s.guard.listener(ln))
	if errors.Is(err, gomilter.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections and waits for open milter sessions to
// end until ctx is done, then closes them.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes listeners and every session at once.
func (s *Server) Close() error { return s.srv.Close() }

// protocolFor chooses which events the MTA sends and which it expects no
// reply to. Every synchronous round trip costs MTA throughput, so only the
// events the rules need are asked for: connect, MAIL and end of message
// always, RCPT only with a recipient cap, headers and body only with a byte
// cap and an MTA that does not report {msg_size}, and those without
// replies.
func protocolFor(r *limits.Rules, msgSize bool) gomilter.OptProtocol {
	p := gomilter.OptNoHelo | gomilter.OptNoData | gomilter.OptNoEOH
	if r.NeedsErrors() {
		// rejected recipients ({rcpt_mailer} "error") and unknown
		// commands, which the MTA has answered already: no reply
		p |= gomilter.OptRcptRej | gomilter.OptNoUnknownReply
	} else {
		p |= gomilter.OptNoUnknown
	}
	if !r.NeedsRecipients() {
		p |= gomilter.OptNoRcptTo
	}
	if r.NeedsBodies() && !msgSize {
		p |= gomilter.OptNoHeaderReply | gomilter.OptNoBodyReply
	} else {
		p |= gomilter.OptNoHeaders | gomilter.OptNoBody
	}
	return p
}

// negotiate takes what the MTA offers of what protocolFor wants. An MTA that
// cannot skip an event simply sends it (the session answers continue); one
// that cannot do without a reply gets one. The data size is always 64 KiB,
// whatever the MTA offers: body chunks then fit the guard's maxFrame.
func (s *Server) negotiate(mtaVersion, milterVersion uint32, mtaActions, _ gomilter.OptAction, mtaProtocol, _ gomilter.OptProtocol, _ gomilter.DataSize) (uint32, gomilter.OptAction, gomilter.OptProtocol, gomilter.DataSize, error) {
	if mtaVersion < 2 {
		return 0, 0, 0, 0, fmt.Errorf("milter: MTA speaks milter protocol version %d, need at least 2", mtaVersion)
	}
	version := min(mtaVersion, milterVersion)
	actions := mtaActions & gomilter.OptSetMacros
	if s.rules.Load().NeedsTagging() {
		actions |= mtaActions & gomilter.OptAddHeader
	}
	s.log.Debug("milter negotiation", "mta_version", mtaVersion, "mta_actions", fmt.Sprintf("%#x", uint32(mtaActions)), "mta_protocol", fmt.Sprintf("%#x", uint32(mtaProtocol)))
	msgSize := s.sizeMacro.Load() == sizeMacro
	return version, actions, protocolFor(s.rules.Load(), msgSize) & mtaProtocol, gomilter.DataSize64K, nil
}

// sizeByMacro reports whether a connection negotiated under proto counts
// message sizes from {msg_size} instead of the stream: neither headers nor
// body are sent.
func sizeByMacro(proto gomilter.OptProtocol) bool {
	return proto&gomilter.OptNoBody != 0 && proto&gomilter.OptNoHeaders != 0
}

// learnSizeMacro records whether an end of message carried {msg_size}.
func (s *Server) learnSizeMacro(present bool) {
	if present {
		if s.sizeMacro.CompareAndSwap(sizeUnseen, sizeMacro) {
			s.log.Info("the MTA reports {msg_size} at end of message: new milter connections no longer ask for headers and body")
		}
		return
	}
	if s.sizeMacro.Swap(sizeAbsent) == sizeMacro {
		s.log.Warn("an MTA sent no {msg_size} at end of message: new milter connections ask for headers and body again (Postfix and Sendmail on one sessioncap?)")
	}
}

func (s *Server) newSession(_ uint32, actions gomilter.OptAction, proto gomilter.OptProtocol, _ gomilter.DataSize) gomilter.Milter {
	return &session{srv: s, proto: proto, actions: actions}
}

// enforceable reports whether the MTA sends every event r needs under the
// negotiated protocol, and allows adding headers when r tags. A connection
// without headers and body serves a byte cap only while the MTAs are known
// to report {msg_size}.
func (s *Server) enforceable(r *limits.Rules, proto gomilter.OptProtocol, actions gomilter.OptAction) bool {
	if r.NeedsTagging() && actions&gomilter.OptAddHeader == 0 {
		return false
	}
	if r.NeedsErrors() && (proto&gomilter.OptRcptRej == 0 || proto&gomilter.OptNoUnknown != 0) {
		return false
	}
	if r.NeedsBodies() && proto&(gomilter.OptNoBody|gomilter.OptNoHeaders) != 0 &&
		!(sizeByMacro(proto) && s.sizeMacro.Load() == sizeMacro) {
		return false
	}
	return !r.NeedsRecipients() || proto&gomilter.OptNoRcptTo == 0
}

// logRefusal writes the one structured line per refusal and counts it.
func (s *Server) logRefusal(r *limits.Refusal, mode limits.Mode, client, queueID string, attrs ...any) {
	s.metrics.refusals.WithLabelValues(string(r.Limit), string(r.Stage), string(mode)).Inc()
	s.log.Warn("refused", append([]any{
		"client_ip", client,
		"queue_id", queueID,
		"limit", string(r.Limit),
		"stage", string(r.Stage),
		"value", r.Value,
		"cap", r.Cap,
		"mode", string(mode),
		"reply", fmt.Sprintf("%d %s", r.Code, r.Reason()),
	}, attrs...)...)
}

// observe records how long a callback took; use it as
// defer s.observe(stage, time.Now()).
func (s *Server) observe(stage limits.Stage, start time.Time) {
	s.metrics.duration[stage].Observe(time.Since(start).Seconds())
}

// admitFrequency asks the store about key under the frequency rule f, after
// checking the keys of replaced prefix lengths for bans still in force. One
// store round trip unless a reload changed the prefix lengths.
func (s *Server) admitFrequency(r *limits.Rules, addr netip.Addr, scope, key string, f limits.Frequency) (limits.Admission, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.storeTimeout)
	defer cancel()
	if l := s.legacy.Load(); l != nil {
		now := s.now()
		for _, k := range *l {
			old := limits.StoreKey(limits.KeyFrequency, scope, k.rules.Key(addr))
			if !k.until.After(now) || old == key {
				continue
			}
			h, err := s.store.Hit(ctx, old, 0, limits.Rate{})
			if err != nil {
				return limits.Admission{}, err
			}
			if !h.BannedUntil.IsZero() {
				return limits.FrequencyVerdict(h), nil
			}
		}
	}
	h, err := s.store.Hit(ctx, key, 1, f.Rate())
	if err != nil {
		return limits.Admission{}, err
	}
	return limits.FrequencyVerdict(h), nil
}

// OpenSessions returns the sessions counted against the concurrency caps.
func (s *Server) OpenSessions() int64 { return s.leases.Total() }
