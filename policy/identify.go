package policy

import (
	"bytes"
	"net/netip"
	"time"
)

// Which SMTP session a policy request belongs to. Postfix sends no session
// id; what it does send (seen from Postfix 3.7.11, see
// testdata/postfix-3.7.11-*.txt):
//
//   - the SMTP connection's endpoints in every request;
//   - instance= empty at CONNECT, EHLO, HELO and MAIL, and
//     pid.seconds.microseconds.seqno (hex) at RCPT, DATA and
//     END-OF-MESSAGE, where seqno counts the session's MAIL commands from 0;
//   - every request of one smtpd process over its one policy connection,
//     and one smtpd process serves one SMTP session at a time: when its
//     requests move to other endpoints, its previous session has ended.
//
// So a request starts a new session when no session has its endpoints, when
// it is a CONNECT, when its policy connection last spoke for other endpoints,
// or when its instance cannot continue the session's (another pid, a seqno
// that went down, the same seqno with another instance). Endpoints reused by
// a later SMTP connection (NAT, a client that picks the same source port)
// are then told apart at CONNECT, at the first request on a policy
// connection that moved, or at the first RCPT (seqno 0). What stays
// ambiguous is a MAIL without a CONNECT before it, on a session that has had
// a transaction: it is the session's next MAIL or a new session's first.
// Such a MAIL is answered DUNNO without a decision (see hold), and the
// transaction's first RCPT, whose instance tells which it is, decides what
// the MAIL would have.

// identity is what tells a session from the next one with the same
// endpoints. It is guarded by the table's lock.
type identity struct {
	connect  bool // the session began with a CONNECT request
	rcpt     bool // a RCPT request of it was seen
	instance string
	pid      string
	seqno    uint64
	seqOK    bool // pid and seqno were parsed from instance
}

// sessionFor finds the session of req: in the server-wide table by the SMTP
// connection's endpoints, or the policy connection's own when the request
// has no usable client address and port. hold reports a MAIL request that
// is answered DUNNO without a decision, because it may belong to this
// session or to a new one with the same endpoints; its first RCPT decides.
func (c *conn) sessionFor(req *request, now time.Time) (s *session, hold bool) {
	t := c.srv.sessions
	client, keyed := c.clientAddr.parse(req.clientAddr, req.clientPort)
	var k sessionKey
	if keyed {
		server, _ := c.serverAddr.parse(req.serverAddr, req.serverPort)
		k = sessionKey{client: client, server: server}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if keyed {
		s = t.lookup(k, now)
	} else {
		s = c.fallback
	}
	moved := c.cur != nil && (c.cur.key != k || (c.cur == c.fallback) == keyed)
	if c.cur != nil && c.cur != s && c.cur.owner == c {
		// this smtpd process has moved on: its previous session ended, and
		// leaves the table before a new session may need its room
		c.cur.owner = nil
		if c.cur.inTable && c.cur.key != k {
			t.remove(c.cur)
		}
	}
	switch {
	case s == nil || req.state == stateConnect || moved || s.id.ends(req):
		if keyed {
			s = t.insert(k, now)
		} else {
			s = &session{}
			c.fallback = s
		}
		s.id.connect = req.state == stateConnect
	case s.id.ambiguous(req):
		hold = true
	}
	s.owner, c.cur = c, s
	s.id.track(req)
	return s, hold
}

// release is called when c closes: its session may go on over another
// policy connection (Postfix closes idle ones and reconnects), so it stays,
// but no longer as the current session of an open connection.
func (c *conn) release() {
	t := c.srv.sessions
	t.mu.Lock()
	if c.cur != nil && c.cur.owner == c {
		c.cur.owner = nil
	}
	c.cur = nil
	t.mu.Unlock()
}

// ends reports whether req's instance cannot belong to the session: another
// smtpd process, a seqno that went down, or the same seqno with another
// instance.
func (id *identity) ends(req *request) bool {
	if len(req.instance) == 0 || !id.seqOK {
		return false
	}
	pid, seq, ok := parseInstance(req.instance)
	if !ok {
		return false
	}
	if string(pid) != id.pid || seq < id.seqno {
		return true
	}
	return seq == id.seqno && string(req.instance) != id.instance
}

// ambiguous reports a MAIL that may be this session's next one or a new
// session's first: no instance to tell, a session that has had a
// transaction, and no CONNECT requests (which would have told) because the
// session did not begin with one. It is held only when a RCPT request will
// decide: the session's RCPTs reach the policy server.
func (id *identity) ambiguous(req *request) bool {
	return req.state == stateMail && len(req.instance) == 0 && id.rcpt && id.instance != "" && !id.connect
}

// track records what req tells of the session.
func (id *identity) track(req *request) {
	if req.state == stateRcpt {
		id.rcpt = true
	}
	if len(req.instance) == 0 || string(req.instance) == id.instance {
		return
	}
	id.instance = string(req.instance)
	pid, seq, ok := parseInstance(req.instance)
	id.seqOK = ok
	if ok {
		if string(pid) != id.pid {
			id.pid = string(pid)
		}
		id.seqno = seq
	}
}

// addrCache parses an address attribute, reusing the last result when the
// bytes are the same: one smtpd process sends the same address in every
// request of a session.
type addrCache struct {
	raw  []byte
	addr netip.Addr
	ok   bool
}

func (a *addrCache) parse(addr, port []byte) (netip.AddrPort, bool) {
	p, ok := parsePort(port)
	if !ok {
		return netip.AddrPort{}, false
	}
	if a.raw == nil || !bytes.Equal(a.raw, addr) {
		ip, err := netip.ParseAddr(string(addr))
		a.raw, a.addr, a.ok = append(a.raw[:0], addr...), ip.Unmap().WithZone(""), err == nil
	}
	if !a.ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.addr, p), true
}

// track records the instance of req in the session's state; it reports
// whether it changed (a new transaction began since the last request).
func (st *sessionState) track(instance []byte) bool {
	if len(instance) == 0 || string(instance) == st.instance {
		return false
	}
	st.instance = string(instance)
	return true
}

// parseInstance splits Postfix's instance "pid.sec.usec.seqno" (hex).
func parseInstance(v []byte) (pid []byte, seqno uint64, ok bool) {
	i, j := bytes.IndexByte(v, '.'), bytes.LastIndexByte(v, '.')
	if i <= 0 || j <= i || j == len(v)-1 || len(v)-j-1 > 16 {
		return nil, 0, false
	}
	var n uint64
	for _, c := range v[j+1:] {
		d, ok := hexDigit(c)
		if !ok {
			return nil, 0, false
		}
		n = n<<4 | uint64(d)
	}
	return v[:i], n, true
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
