package milter

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sessioncap/sessioncap/internal/netguard"
)

// The guard sits between the listener and go-milter. go-milter v0.10.1
// trusts socket bytes: a zero-length packet, a CONNECT, MAIL or RCPT without
// a NUL, or a CONNECT that ends after the host name panic in its connection
// goroutine and take the process down; a length prefix of up to 512 MiB is
// allocated before a byte of it arrives; and nothing bounds how long a peer
// may stay silent. The guard reads one whole packet at a time, checks what
// go-milter would choke on, and only then hands the bytes to go-milter. A peer
// that breaks the protocol loses its own connection, nothing else.

// maxFrame bounds the length prefix of one milter packet (the command byte
// plus its data). The largest packets Postfix and Sendmail send are body
// chunks of at most 65535 bytes (MILTER_CHUNK_SIZE in both), since negotiate
// never accepts the 256K or 1M data sizes, and header packets: Postfix keeps
// up to header_size_limit (default 102400) bytes of one header and sends it
// whole as name NUL value NUL. 128 KiB takes both with room to spare; an
// admin who raises header_size_limit beyond it makes such headers fail the
// milter (milter_default_action), not the process.
const maxFrame = 128 << 10

// negotiationTimeout bounds the wait for the MTA's option negotiation: MTAs
// send it as soon as they connect, so only a peer that does not speak the
// protocol waits this long.
const negotiationTimeout = 10 * time.Second

// DefaultReadTimeout is how long a negotiated milter connection may stay
// silent. Between two milter events the MTA waits for its SMTP client, and
// with HELO, DATA and unknown commands negotiated away several SMTP commands
// can pass without an event. Postfix waits smtpd_timeout (300s) per SMTP
// command; Sendmail's Timeout.command default is 1h. One hour is longer than
// any single legitimate pause; the timeout exists to reclaim connections of
// MTAs that died or vanished without closing them.
const DefaultReadTimeout = time.Hour

// The values of the reason label of sessioncap_milter_protocol_errors_total.
const (
	reasonEmptyFrame     = "empty_frame"       // length prefix 0: no command byte
	reasonOversizedFrame = "oversized_frame"   // length prefix above maxFrame
	reasonTruncatedFrame = "truncated_frame"   // the peer hung up inside a packet
	reasonReadTimeout    = "read_timeout"      // negotiation or read timeout
	reasonUnknownCommand = "unknown_command"   // a command byte no MTA sends
	reasonOutOfOrder     = "out_of_order"      // not OPTNEG first, OPTNEG twice, CONNECT twice
	reasonOptneg         = "malformed_optneg"  // shorter than version, actions, protocol
	reasonConnect        = "malformed_connect" // see validConnect
	reasonMacro          = "malformed_macro"   // no command byte
	reasonCommand        = "malformed_command" // HELO empty, MAIL/RCPT without NUL, HEADER not two strings
)

var protocolErrorReasons = []string{
	reasonEmptyFrame, reasonOversizedFrame, reasonTruncatedFrame, reasonReadTimeout, reasonUnknownCommand,
	reasonOutOfOrder, reasonOptneg, reasonConnect, reasonMacro, reasonCommand,
}

// guard is the server-wide part: policy, metrics and log limits.
type guard struct {
	metrics     *Metrics
	log         *slog.Logger
	allow       []netip.Prefix
	readTimeout time.Duration
	negTimeout  time.Duration // for the option negotiation

	protoLog  netguard.LogLimiter
	refuseLog netguard.LogLimiter
	acceptLog netguard.LogLimiter
}

func newGuard(cfg Config, log *slog.Logger) *guard {
	g := &guard{
		metrics:     cfg.Metrics,
		log:         log.With("component", "milter-guard"),
		allow:       cfg.Allow,
		readTimeout: cfg.ReadTimeout,
		negTimeout:  cfg.negotiationTimeout,
		protoLog:    netguard.LogLimiter{Every: time.Second},
		refuseLog:   netguard.LogLimiter{Every: 10 * time.Second},
		acceptLog:   netguard.LogLimiter{Every: 10 * time.Second},
	}
	if g.allow == nil {
		g.allow = netguard.Loopback
	}
	if g.readTimeout <= 0 {
		g.readTimeout = DefaultReadTimeout
	}
	if g.negTimeout <= 0 {
		g.negTimeout = negotiationTimeout
	}
	return g
}

// allowed reports whether a TCP peer's address is in the allow list. Unix
// socket peers are governed by the socket file's mode and always pass.
func (g *guard) allowed(remote net.Addr) bool { return netguard.Allowed(g.allow, remote) }

// guardListener accepts MTA connections for go-milter: it retries accept
// errors that pass (out of file descriptors, aborted handshakes), refuses
// peers outside the allow list, and wraps every connection in a guardConn.
type guardListener struct {
	net.Listener
	g         *guard
	done      chan struct{}
	closeOnce sync.Once
}

func (g *guard) listener(ln net.Listener) *guardListener {
	return &guardListener{Listener: ln, g: g, done: make(chan struct{})}
}

// Close closes the listener and interrupts a backoff wait.
func (l *guardListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Accept returns the next allowed connection. It returns an error only when
// the listener is closed or fails in a way retrying cannot cure (then the
// daemon exits and its supervisor restarts it).
func (l *guardListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || !netguard.RetryableAcceptError(err) {
				return nil, err
			}
			delay = min(max(2*delay, netguard.AcceptBackoffMin), netguard.AcceptBackoffMax)
			l.g.metrics.acceptErrors.Inc()
			if ok, suppressed := l.g.acceptLog.Allow(time.Now()); ok {
				l.g.log.Error("accept failed; retrying", "err", err, "retry_in", delay.String(), "suppressed", suppressed)
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return nil, net.ErrClosed
			}
			continue
		}
		delay = 0
		if !l.g.allowed(c.RemoteAddr()) {
			l.g.metrics.refusedConns.Inc()
			if ok, suppressed := l.g.refuseLog.Allow(time.Now()); ok {
				l.g.log.Warn("refused milter connection from outside [milter] allow", "remote", c.RemoteAddr().String(), "suppressed", suppressed)
			}
			_ = c.Close()
			continue
		}
		return newGuardConn(c, l.g), nil
	}
}

// guardConn hands go-milter one validated packet at a time. It owns the read
// deadlines: go-milter's own calls to SetReadDeadline are ignored.
//
// It also keeps go-milter's I/O cheap. Reads go through a small buffer, so
// the macros and the command an MTA writes together, or the headers it
// streams, cost one read system call instead of two per packet; packets
// larger than the buffer (body chunks, long headers) are read into a pooled
// buffer that goes back to the pool as soon as go-milter has consumed it, so
// an idle connection holds only the small one. The kernel is told to
// acknowledge at once (TCP_QUICKACK) only where a delayed ACK would stall
// the MTA, see ackNeeded. go-milter writes each reply as a 5-byte head and
// its data in two writes: Write joins them into one.
type guardConn struct {
	net.Conn
	g      *guard
	remote string
	ack    func() // TCP_QUICKACK now; nil when not a Linux TCP socket

	rbuf    [readBufSize]byte
	r, w    int     // rbuf[r:w] is read but not yet framed
	big     *[]byte // pooled buffer holding the current oversized packet
	pending []byte  // the part of the current packet go-milter has not read
	err     error   // sticky: once set, every Read returns it
	state   protoState

	head [5]byte // a reply head held back until its data is written
	held bool
	wbuf []byte // head and data joined; reused

	closeOnce sync.Once
	closeErr  error
}

// readBufSize holds a command with its macros, or a run of headers.
const readBufSize = 4096

// bigBufs are the buffers of packets larger than readBufSize, shared by all
// connections.
var bigBufs = sync.Pool{New: func() any { b := make([]byte, 4+maxFrame); return &b }}

func newGuardConn(c net.Conn, g *guard) *guardConn {
	remote := ""
	if a := c.RemoteAddr(); a != nil {
		remote = a.String()
	}
	if remote == "" || remote == "@" {
		remote = "unix"
	}
	return &guardConn{Conn: c, g: g, remote: remote, ack: quickAcker(c)}
}

// Read serves the current packet; when it is used up, it reads and checks
// the next one.
func (c *guardConn) Read(p []byte) (int, error) {
	if len(c.pending) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if err := c.next(); err != nil {
			c.err = err
			c.releaseBig()
			return 0, err
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// fill reads more bytes into rbuf after the w mark, within the timeout
// that applies. It moves unframed bytes to the front first.
func (c *guardConn) fill() error {
	if c.r > 0 {
		c.w = copy(c.rbuf[:], c.rbuf[c.r:c.w])
		c.r = 0
	}
	timeout := c.g.readTimeout
	if !c.state.negotiated {
		timeout = c.g.negTimeout
	}
	_ = c.Conn.SetReadDeadline(time.Now().Add(timeout))
	n, err := c.Conn.Read(c.rbuf[c.w:])
	c.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// next frames one whole packet.
func (c *guardConn) next() error {
	c.releaseBig()
	for c.w-c.r < 4 {
		if err := c.fill(); err != nil {
			if c.w == c.r && errors.Is(err, io.EOF) {
				return io.EOF // the MTA hung up between packets
			}
			return c.readFailed(err)
		}
	}
	length := binary.BigEndian.Uint32(c.rbuf[c.r:])
	switch {
	case length == 0:
		return c.reject(reasonEmptyFrame, "length", 0)
	case length > maxFrame:
		return c.reject(reasonOversizedFrame, "length", length)
	}
	size := 4 + int(length)
	var frame []byte
	if size <= readBufSize {
		for c.w-c.r < size {
			if err := c.fill(); err != nil {
				return c.readFailed(err)
			}
		}
		frame = c.rbuf[c.r : c.r+size]
		c.r += size
	} else {
		c.big = bigBufs.Get().(*[]byte)
		frame = (*c.big)[:size]
		got := copy(frame, c.rbuf[c.r:c.w])
		c.r, c.w = 0, 0
		if _, err := io.ReadFull(c.Conn, frame[got:]); err != nil {
			return c.readFailed(err)
		}
	}
	if reason := c.state.check(frame[4], frame[5:]); reason != "" {
		return c.reject(reason, "command", string(rune(frame[4])))
	}
	if c.ack != nil && c.r == c.w && ackNeeded(frame[4]) {
		c.ack()
	}
	c.pending = frame
	return nil
}

// releaseBig returns the buffer of an oversized packet to the pool once
// go-milter has read all of it.
func (c *guardConn) releaseBig() {
	if c.big != nil && len(c.pending) == 0 {
		bigBufs.Put(c.big)
		c.big = nil
	}
}

// ackNeeded reports whether the MTA writes again after a packet without
// waiting for a reply (macros, abort, QUIT_NC, headers, body chunks and
// unknown commands when negotiated without replies). The MTA then has unacknowledged data in
// flight and, with Nagle's algorithm, holds its next small packet until the
// ACK comes: a delayed ACK would stall it up to 40 ms. A packet that gets a
// reply needs no extra ACK: the reply carries it. It is asked only when the
// packet is the last one read, since a packet that follows in the same read
// has already arrived.
func ackNeeded(cmd byte) bool {
	switch cmd {
	case cmdMacro, cmdAbort, cmdQuitNC, cmdHeader, cmdBody, cmdEOH, cmdUnknown:
		return true
	}
	return false
}

// Write passes go-milter's writes on, joining the 5-byte head of a reply
// with its data into one write.
func (c *guardConn) Write(p []byte) (int, error) {
	if !c.held && len(p) == 5 && binary.BigEndian.Uint32(p) > 1 {
		copy(c.head[:], p)
		c.held = true
		return 5, nil
	}
	if !c.held {
		return c.Conn.Write(p)
	}
	c.held = false
	c.wbuf = append(append(c.wbuf[:0], c.head[:]...), p...)
	n, err := c.Conn.Write(c.wbuf)
	if n -= 5; n < 0 {
		n = 0
	}
	return n, err
}

// readFailed classifies a read error inside a packet or a timeout.
func (c *guardConn) readFailed(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return c.reject(reasonReadTimeout, "timeout", c.timeoutString())
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return c.reject(reasonTruncatedFrame)
	}
	return err // closed by go-milter, reset by the peer: nothing to count
}

func (c *guardConn) timeoutString() string {
	if !c.state.negotiated {
		return c.g.negTimeout.String()
	}
	return c.g.readTimeout.String()
}

// reject logs and counts a protocol error and closes the connection.
// go-milter sees a plain end of stream and runs the session's Cleanup.
func (c *guardConn) reject(reason string, attrs ...any) error {
	c.g.metrics.protocolErrors.WithLabelValues(reason).Inc()
	if ok, suppressed := c.g.protoLog.Allow(time.Now()); ok {
		args := append([]any{"reason", reason, "remote", c.remote, "suppressed", suppressed}, attrs...)
		c.g.log.Warn("closing milter connection: protocol error", args...)
	}
	_ = c.Close()
	return io.EOF
}

// Close closes the connection once; later calls return the first result.
func (c *guardConn) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.Conn.Close() })
	return c.closeErr
}

// SetReadDeadline is ignored: the guard sets the read deadline of every
// packet itself (go-milter would otherwise clear it after each packet).
func (c *guardConn) SetReadDeadline(time.Time) error { return nil }

// SetDeadline sets only the write deadline; see SetReadDeadline.
func (c *guardConn) SetDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(t) }

// protoState is what the guard remembers of one milter connection to judge
// the order of packets.
type protoState struct {
	negotiated bool // OPTNEG was seen
	connected  bool // CONNECT was seen and no QUIT_NC since
}

// Milter command bytes (SMFIC_*).
const (
	cmdAbort   = 'A'
	cmdBody    = 'B'
	cmdConnect = 'C'
	cmdMacro   = 'D'
	cmdEOB     = 'E'
	cmdHelo    = 'H'
	cmdQuitNC  = 'K'
	cmdHeader  = 'L'
	cmdMail    = 'M'
	cmdEOH     = 'N'
	cmdOptneg  = 'O'
	cmdQuit    = 'Q'
	cmdRcpt    = 'R'
	cmdData    = 'T'
	cmdUnknown = 'U'
)

// check returns the reason a packet must not reach go-milter, or "". It
// rejects what go-milter v0.10.1 would panic on and what it would refuse
// anyway (so that every protocol error is counted the same way), plus a
// second CONNECT without QUIT_NC: Postfix and Sendmail send exactly one
// CONNECT per milter session and QUIT_NC before reusing a connection, and a
// second one would overwrite the first session's admission.
func (st *protoState) check(code byte, data []byte) string {
	if !st.negotiated {
		if code != cmdOptneg {
			return reasonOutOfOrder
		}
		if len(data) < 12 { // version, actions, protocol: 3 × uint32
			return reasonOptneg
		}
		st.negotiated = true
		return ""
	}
	switch code {
	case cmdOptneg:
		return reasonOutOfOrder
	case cmdConnect:
		if st.connected {
			return reasonOutOfOrder
		}
		if !validConnect(data) {
			return reasonConnect
		}
		st.connected = true
	case cmdQuitNC:
		st.connected = false
	case cmdMacro:
		if len(data) == 0 { // the command byte the macros are for
			return reasonMacro
		}
	case cmdHelo:
		if len(data) == 0 {
			return reasonCommand
		}
	case cmdMail, cmdRcpt:
		// go-milter slices past the address's NUL: without one it panics
		if bytes.IndexByte(data, 0) < 0 {
			return reasonCommand
		}
	case cmdHeader:
		if !validHeader(data) {
			return reasonCommand
		}
	case cmdAbort, cmdBody, cmdEOB, cmdEOH, cmdQuit, cmdData, cmdUnknown:
	default:
		return reasonUnknownCommand
	}
	return ""
}

// validConnect checks SMFIC_CONNECT: host NUL family, then for the families
// L (unix), 4 and 6 a 2-byte port and the address (its NUL is optional), and
// for 4 and 6 an address go-milter can parse. U (unknown) has nothing after
// the family. go-milter panics when the NUL or the family byte is missing.
func validConnect(data []byte) bool {
	i := bytes.IndexByte(data, 0)
	if i < 0 || i+1 >= len(data) {
		return false
	}
	family, rest := data[i+1], data[i+2:]
	switch family {
	case 'U':
		return true
	case 'L', '4', '6':
	default:
		return false
	}
	if len(rest) < 2 {
		return false
	}
	addr := rest[2:]
	if j := bytes.IndexByte(addr, 0); j >= 0 {
		addr = addr[:j]
	}
	switch family {
	case '4':
		ip := net.ParseIP(string(addr))
		return ip != nil && ip.To4() != nil
	case '6':
		s := strings.TrimPrefix(string(addr), "IPv6:")
		if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
			s = s[1 : len(s)-1]
		}
		return net.ParseIP(s) != nil
	}
	return true
}

// validHeader checks SMFIC_HEADER: name NUL value, the last NUL optional,
// exactly two strings, as go-milter requires.
func validHeader(data []byte) bool {
	if len(data) < 2 {
		return false
	}
	if data[len(data)-1] == 0 {
		data = data[:len(data)-1]
	}
	return bytes.Count(data, []byte{0}) == 1
}
