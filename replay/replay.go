// Package replay runs sessioncap's engine over the mail log a server
// already writes: it rebuilds the SMTP sessions of Postfix's smtpd and of
// Sendmail from their syslog lines, feeds them to the same session core as
// the milter and the policy server (with the log's timestamps as the clock
// and a memory store), and reports what every rule would have refused and
// what the traffic it caps looks like, so that admins can choose limits
// before they enforce them.
package replay

import (
	"container/heap"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sessioncap/sessioncap/counters"
	"github.com/sessioncap/sessioncap/engine"
	"github.com/sessioncap/sessioncap/limits"
)

// Options configure a Replayer.
type Options struct {
	Rules *limits.Rules
	// MaxTracked bounds the memory store's windows (0: the store's default).
	MaxTracked int
	// Since and Until bound the lines replayed (zero: unbounded); Until is
	// exclusive.
	Since, Until time.Time
	// Lag is how long, in log time, replay waits for the lines that
	// complete a transaction (the queue manager's size and recipient count,
	// the deliveries that name its recipients) before it decides it
	// (default 5 minutes).
	Lag time.Duration
	// MaxRefusals bounds the refusals kept for the report (default 1e6);
	// the rest are counted.
	MaxRefusals int
	// Metrics, when set, registers the engine's metrics (the daemon's
	// sessioncap_refusals_total and others); nil keeps them private.
	Metrics prometheus.Registerer
	// Logger, when set, also gets the engine's log records (the daemon's
	// "refused" and "banned" lines, in the replay's time).
	Logger *slog.Logger
}

// Replayer replays log lines under one set of rules. Feed it with Line
// (or ReadFiles), then call Finish. It is not safe for concurrent use.
type Replayer struct {
	opts   Options
	rules  *limits.Rules
	eng    *engine.Engine
	leases *counters.Leases
	now    time.Time // the engine's clock: the time of the event being decided

	seq      uint64
	events   eventHeap
	maxSeen  time.Time
	lastScan time.Time
	sessions map[string]*session // open sessions by host, tag and pid
	queue    map[string]*tx      // transactions by host, queue and queue id
	nextID   uint64

	cur     *session // the session being decided, for the log records of its refusals
	inTx    bool     // a transaction is being decided
	txRules []string // the rules that refused in it
	rep     *Report
	st      *stats
}

// New returns a Replayer for o.
func New(o Options) (*Replayer, error) {
	if o.Lag <= 0 {
		o.Lag = 5 * time.Minute
	}
	if o.MaxRefusals <= 0 {
		o.MaxRefusals = 1_000_000
	}
	r := &Replayer{opts: o, rules: o.Rules, leases: counters.NewLeases(),
		sessions: map[string]*session{}, queue: map[string]*tx{}}
	r.rep = newReport(o.Rules)
	r.st = newStats(o.Rules)
	clock := func() time.Time { return r.now }
	var reg prometheus.Registerer = prometheus.NewRegistry()
	if o.Metrics != nil {
		reg = o.Metrics
	}
	store := counters.NewMemory(counters.MemoryOptions{MaxTracked: o.MaxTracked, Now: clock, Host: "replay"})
	eng, err := engine.New(engine.Config{
		Rules:   o.Rules,
		Store:   store,
		Metrics: engine.NewMetrics(reg),
		Logger:  slog.New(&capture{r: r}),
		Now:     clock,
	})
	if err != nil {
		return nil, err
	}
	r.eng = eng
	return r, nil
}

// session is one SMTP session as the log tells it.
type session struct {
	id       uint64
	ip       netip.Addr
	user     string // Sendmail: AUTH authid
	sendmail bool
	cur      *tx // the transaction lines attach to
	lastSeen time.Time
	ended    bool // an End event is queued
	mailOK   int  // transactions seen whose MAIL was accepted

	// replay state
	core    *engine.Session
	hungUp  bool
	started bool
	refused map[string]bool // the rules that refused in this session
	openKey netip.Prefix    // the network its open session is counted under
	msgs    int64
	rcpts   int64
	bytes   int64
}

// rcpt is one recipient of a transaction: one the MTA rejected, one the
// milter refused in the live run, or one placeholder for the recipients
// the MTA accepted (filled from the deliveries).
type rcpt struct {
	addr     string
	rejected bool // by the MTA: counted by the errors rule, never a recipient
	accepted bool // the block of accepted recipients
}

// tx is one transaction as the log tells it.
type tx struct {
	s        *session
	qid      string
	qkey     string
	sender   string
	user     string
	size     int64 // -1: the message was not received
	nrcpt    int
	rcpts    []rcpt
	accepted []string // recipients the deliveries named
	seen     map[string]struct{}
	closed   bool // no more reject lines belong to it
	done     bool // Sendmail: its from= line was seen
}

type evKind int

const (
	evConnect evKind = iota
	evTx
	evEnd
)

type event struct {
	t    time.Time
	seq  uint64
	kind evKind
	s    *session
	tx   *tx
}

type eventHeap []*event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if !h[i].t.Equal(h[j].t) {
		return h[i].t.Before(h[j].t)
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(*event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

func (r *Replayer) push(t time.Time, k evKind, s *session, x *tx) {
	r.seq++
	heap.Push(&r.events, &event{t: t, seq: r.seq, kind: k, s: s, tx: x})
}

// sessionIdle is how long a session with no line is kept open: Postfix
// logs every disconnect (an hour covers smtpd's timeouts); Sendmail logs
// none, so its sessions end with their last line (plus the lag).
const sessionIdle = time.Hour

// Line replays one parsed line.
func (r *Replayer) Line(l Line) {
	r.rep.Lines++
	if !r.opts.Since.IsZero() && l.Time.Before(r.opts.Since) || !r.opts.Until.IsZero() && !l.Time.Before(r.opts.Until) {
		r.rep.OutOfRange++
		return
	}
	pk, inst := classify(l.Prog)
	if pk == progNone {
		r.rep.Ignored++
		return
	}
	if l.Time.After(r.maxSeen) {
		r.maxSeen = l.Time
	}
	if r.rep.First.IsZero() || l.Time.Before(r.rep.First) {
		r.rep.First = l.Time
	}
	if l.Time.After(r.rep.Last) {
		r.rep.Last = l.Time
	}
	var m mtaLine
	if pk == progSendmail {
		m = parseSendmail(l.Msg)
	} else {
		m = parsePostfix(pk, l.Msg)
	}
	if r.place(l, pk, inst, m) {
		r.rep.Used++
	} else if m.kind == kindOther {
		r.rep.Ignored++
	} else {
		r.rep.Unplaced++
	}
	r.release(false)
}

// place attaches m to its session and transaction; false when it has none.
func (r *Replayer) place(l Line, pk progKind, inst string, m mtaLine) bool {
	skey := l.Host + " " + l.Prog + "[" + l.PID + "]"
	qkey := l.Host + " " + inst + " " + m.qid
	s := r.sessions[skey]
	sendmail := pk == progSendmail
	switch m.kind {
	case kindOther, kindUnplaced:
		return false
	case kindConnect:
		if s != nil {
			r.end(skey, s, s.lastSeen)
		}
		r.open(skey, l.Time, m.ip, sendmail)
		return true
	case kindDisconnect:
		if s == nil { // ended already (Sendmail logs a refused connect's end twice)
			return true
		}
		// A MAIL that got no recipient line (MAIL then RSET or QUIT, a
		// recipient the milter saw and the MTA then rejected without a
		// line) leaves no line but the count at disconnect; the milter
		// decided it all the same.
		for missing := m.nrcpt - s.mailOK; missing > 0; missing-- {
			r.newTx(s, l.Time, "").closed = true
		}
		r.end(skey, s, l.Time)
		return true
	case kindDelivery, kindRemoved:
		x := r.queue[qkey]
		if x == nil {
			return false
		}
		if m.kind == kindRemoved {
			delete(r.queue, qkey)
			return true
		}
		for _, a := range m.rcpts {
			x.addAccepted(a)
		}
		return true
	case kindMilterEOM:
		x := r.queue[qkey]
		if x == nil {
			return false
		}
		x.size = -2 // refused at its end: received, size unknown
		x.closed = true
		return true
	}
	if pk == progPostfixQueue { // qmgr's from=, size=, nrcpt=
		x := r.queue[qkey]
		if x == nil || m.kind != kindMessage {
			return false
		}
		x.sender, x.size, x.nrcpt, x.closed = m.sender, m.size, m.nrcpt, true
		return true
	}
	if s == nil {
		if !sendmail || !m.ip.IsValid() && m.kind != kindAuth && m.kind != kindMilterMail && m.kind != kindMilterRcpt && m.kind != kindMTAReject {
			return false
		}
		// Sendmail logs connections only at LogLevel 10 and above: a
		// session starts with its first line.
		s = r.open(skey, l.Time, m.ip, true)
	}
	s.lastSeen = l.Time
	if !s.ip.IsValid() && m.ip.IsValid() {
		s.ip = m.ip
	}
	switch m.kind {
	case kindAuth:
		s.user = m.user
		return true
	case kindClient:
		x := s.cur
		if x == nil || x.closed || x.qid != "" {
			x = r.newTx(s, l.Time, "")
		}
		x.qid, x.qkey, x.user = m.qid, qkey, m.user
		if m.user != "" { // a login lasts for the session
			s.user = m.user
		}
		x.rcpts = append(x.rcpts, rcpt{accepted: true})
		r.queue[qkey] = x
		return true
	case kindMTAReject, kindMilterRcpt, kindMilterMail:
		x := r.txFor(s, l.Time, m, qkey)
		if m.sender != "" || m.kind == kindMilterMail {
			x.sender = m.sender
		}
		if m.user != "" {
			x.user, s.user = m.user, m.user
		}
		switch m.kind {
		case kindMTAReject:
			x.addRcpt(rcpt{addr: m.rcpt, rejected: true})
		case kindMilterRcpt:
			x.addRcpt(rcpt{addr: m.rcpt})
		case kindMilterMail:
			if !x.closed {
				s.mailOK--
			}
			x.closed = true
		}
		return true
	case kindMessage: // Sendmail: the transaction's last line
		x := s.cur
		if x == nil || x.done || x.qid != m.qid || x.sender != m.sender {
			// (a MAIL the milter refused was closed by its reject line,
			// and its from= line comes with the next MAIL or at QUIT)
			x = r.txFor(s, l.Time, m, qkey)
		}
		x.sender, x.done = m.sender, true
		if m.nrcpt > 0 {
			x.size, x.nrcpt = m.size, m.nrcpt
			if !x.hasAccepted() {
				x.rcpts = append([]rcpt{{accepted: true}}, x.rcpts...)
			}
		}
		x.closed = true
		return true
	}
	return false
}

// txFor returns the transaction a reject or Sendmail line belongs to.
func (r *Replayer) txFor(s *session, t time.Time, m mtaLine, qkey string) *tx {
	if m.qid != "" {
		// Sendmail gives a refused MAIL's queue id to the next
		// transaction: a closed transaction takes no more lines.
		if x := r.queue[qkey]; x != nil && x.s == s && !x.closed {
			return x
		}
		if s.sendmail { // every Sendmail transaction has its queue id from MAIL on
			x := r.newTx(s, t, m.qid)
			x.qkey = qkey
			r.queue[qkey] = x
			return x
		}
	}
	// Postfix before the queue file: rejects of one MAIL carry its sender.
	if x := s.cur; x != nil && !x.closed && x.qid == "" && m.kind != kindMilterMail && x.sender == m.sender {
		return x
	}
	return r.newTx(s, t, m.qid)
}

func (r *Replayer) newTx(s *session, t time.Time, qid string) *tx {
	x := &tx{s: s, qid: qid, size: -1}
	s.mailOK++ // undone by a line saying the milter refused the MAIL
	if s.cur != nil {
		s.cur.closed = true
	}
	s.cur = x
	r.push(t, evTx, s, x)
	return x
}

func (x *tx) hasAccepted() bool {
	for _, rc := range x.rcpts {
		if rc.accepted {
			return true
		}
	}
	return false
}

func (x *tx) addAccepted(a string) {
	a = strings.ToLower(a)
	if _, dup := x.seen[a]; dup || x.nrcpt > 0 && len(x.accepted) >= x.nrcpt || len(x.accepted) >= maxRcpts {
		return
	}
	if x.seen == nil {
		x.seen = map[string]struct{}{}
	}
	x.seen[a] = struct{}{}
	x.accepted = append(x.accepted, a)
}

// addRcpt records a recipient the MTA rejected or the milter refused.
func (x *tx) addRcpt(rc rcpt) {
	if len(x.rcpts) < maxRcpts {
		x.rcpts = append(x.rcpts, rc)
	}
}

func (r *Replayer) open(key string, t time.Time, ip netip.Addr, sendmail bool) *session {
	r.nextID++
	s := &session{id: r.nextID, ip: ip, sendmail: sendmail, lastSeen: t}
	r.sessions[key] = s
	r.push(t, evConnect, s, nil)
	return s
}

func (r *Replayer) end(key string, s *session, t time.Time) {
	if s.cur != nil {
		s.cur.closed = true
	}
	s.ended = true
	delete(r.sessions, key)
	r.push(t, evEnd, s, nil)
}

// release decides the events older than the lag (all of them at the end).
func (r *Replayer) release(all bool) {
	if !all && r.maxSeen.Sub(r.lastScan) >= time.Minute {
		r.lastScan = r.maxSeen
		for k, s := range r.sessions {
			idle := sessionIdle
			if s.sendmail {
				idle = r.opts.Lag
			}
			if r.maxSeen.Sub(s.lastSeen) > idle {
				r.end(k, s, s.lastSeen)
			}
		}
	}
	horizon := r.maxSeen.Add(-r.opts.Lag)
	for r.events.Len() > 0 {
		e := r.events[0]
		if !all && !e.t.Before(horizon) {
			return
		}
		heap.Pop(&r.events)
		if e.t.After(r.now) {
			r.now = e.t
		}
		r.apply(e)
	}
}

// Flush decides every event read so far without waiting for the lines
// that may still complete them (for a feed that knows it has written a
// whole transaction).
func (r *Replayer) Flush() { r.release(true) }

// Refusals returns the refusals decided so far (up to MaxRefusals).
func (r *Replayer) Refusals() []Refusal { return r.rep.Refusals }

// Finish ends every open session, decides what is left and returns the
// report.
func (r *Replayer) Finish() *Report {
	for k, s := range r.sessions {
		r.end(k, s, s.lastSeen)
	}
	r.release(true)
	r.st.finish(r.rep)
	r.rep.finishRules()
	return r.rep
}

// apply feeds one event to the engine.
func (r *Replayer) apply(e *event) {
	s := e.s
	r.cur = s
	defer func() { r.cur = nil }()
	switch e.kind {
	case evConnect:
		r.rep.Sessions++
		s.core = r.eng.NewSession(r.rules, engine.Options{Leases: r.leases, CanTag: true})
		s.started = true
		r.st.connect(s, r.now, r.rules)
		if v := s.core.Connect(s.ip); v.HangUp {
			s.hungUp = true
		}
	case evTx:
		if e.tx.qkey != "" && r.queue[e.tx.qkey] == e.tx {
			delete(r.queue, e.tx.qkey)
		}
		if !s.started {
			return
		}
		r.st.transaction(s, e.tx, r.now, r.rules)
		if s.hungUp {
			r.rep.AfterHangUp++
			return
		}
		r.transaction(s, e.tx)
	case evEnd:
		if !s.started {
			return
		}
		s.core.End()
		r.st.end(s, r.now)
		for name := range s.refused {
			r.rep.rule(name).Sessions++
		}
	}
}

// transaction decides one transaction: MAIL, each RCPT, end of message.
func (r *Replayer) transaction(s *session, x *tx) {
	user := x.user
	if user == "" {
		user = s.user
	}
	r.inTx, r.txRules = true, r.txRules[:0]
	defer func() {
		r.inTx = false
		if len(r.txRules) > 0 {
			r.rep.MessagesRefused++
		}
		for _, name := range r.txRules {
			r.rep.rule(name).Messages++
		}
	}()
	r.rep.Messages++
	v := s.core.Mail(engine.Mail{Sender: x.sender, Size: -1, User: user, QueueID: x.qid})
	if v.HangUp {
		s.hungUp = true
	}
	if v.Refusal != nil {
		s.core.Abort()
		return
	}
	// RCPT: a refused recipient is not one (the next goes on), a 421
	// ends the session; a message none of whose recipients was let
	// through never reached DATA.
	accepted := 0
	rcpt := func(a string) bool {
		v := s.core.Rcpt(a)
		if v.HangUp {
			s.hungUp = true
			return false
		}
		if v.Refusal == nil {
			accepted++
		}
		return true
	}
rcpts:
	for _, rc := range x.rcpts {
		switch {
		case rc.rejected:
			s.core.RcptRejected(rc.addr)
		case rc.accepted:
			for i := 0; i < x.acceptedCount(); i++ {
				if !rcpt(x.placeholder(i)) {
					break rcpts
				}
			}
		default:
			if !rcpt(rc.addr) {
				break rcpts
			}
		}
	}
	if x.size == -1 || accepted == 0 || s.hungUp {
		s.core.Abort()
		return
	}
	size := x.size
	if size < 0 {
		size = -1
	}
	if v := s.core.EndOfMessage(size, -1); v.HangUp {
		s.hungUp = true
	}
}

// acceptedCount is the number of recipients the MTA accepted: nrcpt when
// the queue manager told it, else those the deliveries named.
func (x *tx) acceptedCount() int {
	return min(max(x.nrcpt, len(x.accepted)), maxRcpts)
}

// maxRcpts bounds the recipients of one message replay decides (Postfix's
// smtpd_recipient_limit is 1000 by default): a log line that claims more
// costs no more.
const maxRcpts = 10_000

// placeholder names the i-th accepted recipient: from the deliveries, or
// one of its own for a recipient no delivery named within the lag.
func (x *tx) placeholder(i int) string {
	if i < len(x.accepted) {
		return x.accepted[i]
	}
	return "unknown-" + itoa(i) + "@" + x.qid + ".invalid"
}
