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
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// Store keeps the state that outlives a session: sliding windows and bans
// per key (see engine.Store). counters.ErrUnavailable from it (store
// on_error = "tempfail") makes the connection answer 421 at connect; any
// other error lets the connection through.
type Store = engine.Store

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
	// negotiationTimeout replaces negotiationTimeout in tests.
	negotiationTimeout time.Duration
	// Engine, when set, is shared with other front-ends: its rules, store
	// and clock are used, and Rules, Store, Now and StoreTimeout are ignored.
	// Its Metrics must come from the same registry as Metrics.
	Engine *engine.Engine
}

// Server is a milter server enforcing sessioncap's limits.
type Server struct {
	eng     *engine.Engine // rules, frequency admission, refusal logs
	leases  *counters.Leases
	metrics *Metrics
	log     *slog.Logger
	srv     *gomilter.Server
	guard   *guard
}

// macros are requested from the MTA. Postfix sends exactly the requested
// list, and does not send {client_addr} unless asked.
var macros = map[gomilter.MacroStage][]gomilter.MacroName{
	gomilter.StageConnect: {gomilter.MacroClientAddr},
	gomilter.StageMail:    {gomilter.MacroQueueId, gomilter.MacroAuthAuthen},
	gomilter.StageRcpt:    {gomilter.MacroQueueId, gomilter.MacroRcptMailer},
	gomilter.StageEOM:     {gomilter.MacroQueueId},
}

// NewServer returns a server; call Serve to accept MTA connections.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Metrics == nil {
		return nil, errors.New("milter: Metrics are required")
	}
	eng := cfg.Engine
	if eng == nil {
		if cfg.Rules == nil || cfg.Store == nil {
			return nil, errors.New("milter: Rules and Store are required")
		}
		var err error
		eng, err = engine.New(engine.Config{Rules: cfg.Rules, Store: cfg.Store, Metrics: cfg.Metrics.shared,
			Logger: cfg.Logger, Now: cfg.Now, StoreTimeout: cfg.StoreTimeout})
		if err != nil {
			return nil, err
		}
	}
	s := &Server{eng: eng, leases: counters.NewLeases(), metrics: cfg.Metrics, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
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
func (s *Server) SetRules(r *limits.Rules) error { return s.eng.SetRules(r) }

// Rules returns the rules new sessions get.
func (s *Server) Rules() *limits.Rules { return s.eng.Rules() }

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
// cap, and those without replies.
//
// Under a byte cap every milter connection asks for headers and body, even
// where the MTA could report the size in Sendmail's {msg_size} at end of
// message: Postfix and Sendmail offer identical option negotiations
// (version 6, actions 0x1ff, protocol 0x1fffff), so which MTA connects is
// unknown when this must be chosen, and a connection negotiated without
// them cannot ask for them later: a Postfix session on it would count
// every message as 0 bytes.
func protocolFor(r *limits.Rules) gomilter.OptProtocol {
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
	if r.NeedsBodies() {
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
	r := s.eng.Rules() // one load: the actions and the protocol come from the same rules
	if r.NeedsTagging() {
		actions |= mtaActions & gomilter.OptAddHeader
	}
	s.log.Debug("milter negotiation", "mta_version", mtaVersion, "mta_actions", fmt.Sprintf("%#x", uint32(mtaActions)), "mta_protocol", fmt.Sprintf("%#x", uint32(mtaProtocol)))
	return version, actions, protocolFor(r) & mtaProtocol, gomilter.DataSize64K, nil
}

func (s *Server) newSession(_ uint32, actions gomilter.OptAction, proto gomilter.OptProtocol, _ gomilter.DataSize) gomilter.Milter {
	return &session{srv: s, proto: proto, actions: actions}
}

// enforceable reports whether the MTA sends every event r needs under the
// negotiated protocol, and allows adding headers when r tags.
func (s *Server) enforceable(r *limits.Rules, proto gomilter.OptProtocol, actions gomilter.OptAction) bool {
	if r.NeedsTagging() && actions&gomilter.OptAddHeader == 0 {
		return false
	}
	if r.NeedsErrors() && (proto&gomilter.OptRcptRej == 0 || proto&gomilter.OptNoUnknown != 0) {
		return false
	}
	if r.NeedsBodies() && proto&(gomilter.OptNoBody|gomilter.OptNoHeaders) != 0 {
		return false
	}
	return !r.NeedsRecipients() || proto&gomilter.OptNoRcptTo == 0
}

// observe records how long a callback took; use it as
// defer s.observe(stage, time.Now()).
func (s *Server) observe(stage limits.Stage, start time.Time) { s.eng.Observe(stage, start) }

// OpenSessions returns the sessions counted against the concurrency caps.
func (s *Server) OpenSessions() int64 { return s.leases.Total() }
