package policy

import (
	"bytes"
	"net/netip"
	"time"
)

// Which SMTP session a policy request belongs to: Postfix sends no
// session id, so it is told from the endpoints and the instance attribute.

// sessionFor finds the session of req: in the server-wide table by the SMTP
// connection's endpoints, or the policy connection's own when the request
// has no usable client address and port.
func (c *conn) sessionFor(req *request, now time.Time) *session {
	client, ok := c.clientAddr.parse(req.clientAddr, req.clientPort)
	if !ok {
		if c.fallback == nil {
			c.fallback = &session{}
		}
		return c.fallback
	}
	server, _ := c.serverAddr.parse(req.serverAddr, req.serverPort)
	return c.srv.sessions.get(sessionKey{client: client, server: server}, now)
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

// newSession reports whether req belongs to another SMTP session than the
// one st counts (see the package documentation).
func (st *sessionState) newSession(req *request) bool {
	if !st.started {
		return false
	}
	if req.state == stateConnect {
		return true
	}
	if len(req.instance) == 0 || !st.seqOK {
		return false
	}
	pid, seq, ok := parseInstance(req.instance)
	if !ok {
		return false
	}
	if string(pid) != st.pid || seq < st.seqno {
		return true
	}
	return seq == st.seqno && string(req.instance) != st.instance
}

// track records the instance of req; it reports whether it changed.
func (st *sessionState) track(instance []byte) bool {
	if len(instance) == 0 || string(instance) == st.instance {
		return false
	}
	st.instance = string(instance)
	pid, seq, ok := parseInstance(instance)
	st.seqOK = ok
	if ok {
		if string(pid) != st.pid {
			st.pid = string(pid)
		}
		st.seqno = seq
	}
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
