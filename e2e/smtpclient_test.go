package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// smtpClient speaks SMTP over one connection, one command at a time, and
// records a timestamped transcript, including the moment the server hung up
// and what the client was waiting for then.
type smtpClient struct {
	t       testing.TB
	name    string
	conn    net.Conn
	r       *bufio.Reader
	start   time.Time
	timeout time.Duration

	mu    sync.Mutex
	lines []transcriptLine

	greeting reply
	ext      map[string]string // EHLO keywords, upper case, to parameters
	closed   bool              // the server closed the connection
	closedIn string            // what the client was waiting for when it did
}

type transcriptLine struct {
	at   time.Duration
	dir  string // "C:" client, "S:" server, "--" event
	text string
}

// reply is one SMTP reply, or how waiting for one ended.
type reply struct {
	code  int
	lines []string // text after "NNN-" / "NNN "
	// eof is set when the server closed the connection before a complete
	// reply; err holds any other read error (timeout, reset).
	eof bool
	err error
}

func (r reply) text() string { return strings.Join(r.lines, " / ") }

func (r reply) String() string {
	switch {
	case r.eof:
		return "EOF"
	case r.err != nil:
		return "error: " + r.err.Error()
	}
	return fmt.Sprintf("%d %s", r.code, r.text())
}

// dialSMTP connects and reads the greeting, whatever it is: a 421 at
// connect is a result, not an error.
func dialSMTP(t testing.TB, name, addr string) *smtpClient {
	t.Helper()
	return dialSMTPFrom(t, name, addr, "")
}

// dialSMTPFrom is dialSMTP from the local address from (a loopback address
// such as "127.0.5.1", so that the MTA sees another client network); ""
// lets the system choose.
func dialSMTPFrom(t testing.TB, name, addr, from string) *smtpClient {
	t.Helper()
	c := &smtpClient{t: t, name: name, start: time.Now(), timeout: 60 * time.Second}
	d := net.Dialer{Timeout: 10 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", name, addr, err)
	}
	c.conn = conn
	c.r = bufio.NewReader(conn)
	c.event("connected to " + addr + " from " + conn.LocalAddr().String())
	t.Cleanup(func() {
		c.conn.Close()
		if t.Failed() {
			t.Logf("%s transcript:\n%s", c.name, c.transcript())
		}
	})
	c.greeting = c.readReply("greeting")
	return c
}

func (c *smtpClient) record(dir, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines = append(c.lines, transcriptLine{at: time.Since(c.start), dir: dir, text: text})
}

func (c *smtpClient) event(text string) { c.record("--", text) }

// transcript renders the transcript with offsets from the dial.
func (c *smtpClient) transcript() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, l := range c.lines {
		fmt.Fprintf(&b, "%9.3fs %s %s\n", l.at.Seconds(), l.dir, l.text)
	}
	return b.String()
}

// readReply reads one reply (all its lines). waitingFor names the stage for
// the transcript when the server hangs up instead of replying.
func (c *smtpClient) readReply(waitingFor string) reply {
	var r reply
	if c.closed {
		r.eof = true
		return r
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	for n := 0; n < 100; n++ {
		line, err := c.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) || isReset(err) {
				if line != "" {
					c.record("S:", line+" (no CRLF)")
				}
				c.closed = true
				c.closedIn = waitingFor
				c.event(fmt.Sprintf("server closed the connection while the client waited for the %s reply (%v)", waitingFor, err))
				r.eof = true
				return r
			}
			c.event(fmt.Sprintf("read error while waiting for the %s reply: %v", waitingFor, err))
			r.err = err
			return r
		}
		line = strings.TrimRight(line, "\r\n")
		c.record("S:", line)
		if len(line) < 3 {
			r.err = fmt.Errorf("malformed reply line %q", line)
			return r
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			r.err = fmt.Errorf("malformed reply line %q", line)
			return r
		}
		r.code = code
		more := len(line) > 3 && line[3] == '-'
		if len(line) > 4 {
			r.lines = append(r.lines, line[4:])
		} else {
			r.lines = append(r.lines, "")
		}
		if !more {
			return r
		}
	}
	r.err = errors.New("reply longer than 100 lines")
	return r
}

func isReset(err error) bool {
	return errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection reset")
}

// write sends raw bytes; a failure (the server hung up) is recorded.
func (c *smtpClient) write(stage string, p []byte) error {
	if c.closed {
		return io.EOF
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := c.conn.Write(p); err != nil {
		c.event(fmt.Sprintf("write failed during %s: %v", stage, err))
		return err
	}
	return nil
}

// cmd sends one command line and reads its reply.
func (c *smtpClient) cmd(stage, line string) reply {
	c.record("C:", line)
	if err := c.write(stage, []byte(line+"\r\n")); err != nil {
		return c.readReply(stage) // may still find a reply or the EOF
	}
	return c.readReply(stage)
}

// ehlo sends EHLO and records the extensions.
func (c *smtpClient) ehlo(name string) reply {
	r := c.cmd("EHLO", "EHLO "+name)
	if r.code == 250 {
		c.ext = map[string]string{}
		for _, l := range r.lines[1:] {
			k, v, _ := strings.Cut(l, " ")
			c.ext[strings.ToUpper(k)] = v
		}
	}
	return r
}

// expectClose waits up to d for the server to close the connection, reading
// anything it still sends. It reports whether it closed.
func (c *smtpClient) expectClose(d time.Duration) bool {
	if c.closed {
		return true
	}
	old := c.timeout
	c.timeout = d
	defer func() { c.timeout = old }()
	for i := 0; i < 5 && !c.closed; i++ {
		r := c.readReply("close")
		if r.err != nil {
			return false
		}
	}
	return c.closed
}

// quit sends QUIT and waits for the close.
func (c *smtpClient) quit() {
	if c.closed {
		return
	}
	c.cmd("QUIT", "QUIT")
	c.expectClose(5 * time.Second)
	c.conn.Close()
}

// message is one message to send in a transaction.
type message struct {
	from  string
	rcpts []string
	data  []byte // dot-stuffed-free RFC 5322 text with CRLF line ends
	// size, when set, is sent as MAIL FROM SIZE=.
	size int
}

// txResult is how one transaction went.
type txResult struct {
	mail  reply
	rcpts []reply
	data  reply // the 354 (or refusal) to DATA
	eom   reply // the reply to the final dot
	// stage is the last command the client sent: MAIL, RCPT, DATA, EOM.
	stage    string
	accepted bool // 250 after the final dot
	// closedIn is where the server hung up during this transaction, if it
	// did: "MAIL", "RCPT", "DATA", "EOM" mean "instead of replying to it".
	closedIn string
	// sentAt and replyAt bracket the final dot.
	dotSentAt, eomReplyAt time.Time
}

// send runs one mail transaction: MAIL, RCPT for each recipient, DATA,
// message, final dot. It stops at the first refusal it cannot go on from:
// a non-2xx MAIL, no accepted recipient, a non-354 DATA.
func (c *smtpClient) send(m message) (res txResult) {
	defer func() {
		if c.closed && res.closedIn == "" && c.closedIn != "close" {
			res.closedIn = c.closedIn
		}
	}()
	mail := "MAIL FROM:<" + m.from + ">"
	if m.size > 0 {
		mail += " SIZE=" + strconv.Itoa(m.size)
	}
	res.stage = "MAIL"
	res.mail = c.cmd("MAIL", mail)
	if res.mail.code != 250 {
		return res
	}
	ok := 0
	res.stage = "RCPT"
	for _, rc := range m.rcpts {
		r := c.cmd("RCPT", "RCPT TO:<"+rc+">")
		res.rcpts = append(res.rcpts, r)
		if r.code == 250 || r.code == 251 {
			ok++
		}
		if c.closed {
			return res
		}
	}
	if ok == 0 {
		return res
	}
	res.stage = "DATA"
	res.data = c.cmd("DATA", "DATA")
	if res.data.code != 354 {
		return res
	}
	res.stage = "EOM"
	body := dotStuff(m.data)
	c.record("C:", fmt.Sprintf("(%d bytes of message)", len(body)))
	if err := c.write("EOM", body); err != nil {
		res.eom = c.readReply("EOM")
		return res
	}
	c.record("C:", ".")
	res.dotSentAt = time.Now()
	if err := c.write("EOM", []byte(".\r\n")); err != nil {
		res.eom = c.readReply("EOM")
		return res
	}
	res.eom = c.readReply("EOM")
	res.eomReplyAt = time.Now()
	res.accepted = res.eom.code == 250
	return res
}

// dotStuff doubles leading dots and makes sure the text ends in CRLF.
func dotStuff(data []byte) []byte {
	s := string(data)
	if !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	s = strings.ReplaceAll(s, "\r\n.", "\r\n..")
	if strings.HasPrefix(s, ".") {
		s = "." + s
	}
	return []byte(s)
}
