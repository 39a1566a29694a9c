package admin

import (
	"github.com/sessioncap/sessioncap/internal/socket"

	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"unicode"
)

// maxConns bounds the connections the admin server holds at once. A new
// connection that finds every slot taken closes one that sits idle between
// requests (keep-alive); with none idle, it waits for a slot, and further
// ones wait in the kernel's backlog.
const maxConns = 32

// ParseSpec reads an admin socket address in the notation of the milter
// socket (see socket.Parse) and returns the network and address to dial or
// listen on.
func ParseSpec(spec string) (network, address string, err error) {
	network, address, err = socket.Parse(spec)
	if err != nil {
		return "", "", fmt.Errorf("admin socket %w", err)
	}
	return network, address, nil
}

// ReadToken reads a bearer token from file: the file must not be readable
// or writable by others, and the token, trimmed, must be non-empty printable
// ASCII.
func ReadToken(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("admin token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("admin token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("admin token file %s: not a regular file", file)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return "", fmt.Errorf("admin token file %s is accessible by others (mode %04o); chmod o= %s (0600 or 0640)", file, perm, file)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4097))
	if err != nil {
		return "", fmt.Errorf("admin token file: %w", err)
	}
	if len(data) > 4096 {
		return "", fmt.Errorf("admin token file %s: longer than 4096 bytes", file)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("admin token file %s is empty", file)
	}
	for _, r := range token {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) || r == ' ' {
			return "", fmt.Errorf("admin token file %s: the token must be one line of printable ASCII without spaces", file)
		}
	}
	return token, nil
}

// Listener is the admin socket Listen opens. It carries the token read from
// the token file (NewServer passes it to the handler), bounds the
// connections it hands out, and names a unix peer by its credentials.
type Listener struct {
	net.Listener
	token string
	path  string      // unix socket path; "" over TCP
	inode os.FileInfo // of the socket we created, so Close removes only ours
	sem   chan struct{}
	once  sync.Once

	mu   sync.Mutex
	idle map[*conn]struct{} // connections between requests (trackState)
}

// Listen opens the admin socket spec (see ParseSpec). Over TCP it needs a
// token file (ReadToken), whose token every request must then carry. A
// unix socket gets mode 0660 and, when group names an existing group, that
// group; a stale socket left by a crash is replaced, a live one is refused.
func Listen(spec, tokenFile, group string) (net.Listener, error) {
	network, address, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	var token string
	if tokenFile != "" {
		if token, err = ReadToken(tokenFile); err != nil {
			return nil, err
		}
	}
	l := &Listener{token: token, sem: make(chan struct{}, maxConns), idle: make(map[*conn]struct{})}
	if network != "unix" {
		if tokenFile == "" {
			return nil, fmt.Errorf("admin socket %s: listening on TCP needs admin.token_file (a bearer token every request must carry); or use a unix socket", spec)
		}
		if l.Listener, err = net.Listen(network, address); err != nil {
			return nil, err
		}
		return l, nil
	}
	if l.Listener, err = listenUnix(address, group); err != nil {
		return nil, err
	}
	l.path = address
	l.inode, _ = os.Lstat(address)
	return l, nil
}

func listenUnix(path, group string) (net.Listener, error) {
	ln, err := socket.ListenUnix(path, group)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}

// Accept waits for a connection, then for a free slot: when every slot is
// taken it first closes a connection idle between requests, so that
// keep-alive connections never lock an operator out.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	select {
	case l.sem <- struct{}{}:
	default:
		l.closeIdle()
		l.sem <- struct{}{}
	}
	pc := &conn{Conn: c, release: func() { <-l.sem }}
	if uc, ok := c.(*net.UnixConn); ok {
		pc.peer = peerAddr(uc)
	}
	return pc, nil
}

// closeIdle closes one connection idle between requests, if any.
func (l *Listener) closeIdle() {
	l.mu.Lock()
	var victim *conn
	for c := range l.idle {
		victim = c
		delete(l.idle, c)
		break
	}
	l.mu.Unlock()
	if victim != nil {
		victim.Close()
	}
}

// trackState is the http.Server's ConnState hook (NewServer sets it): it
// keeps the set of idle connections closeIdle picks from.
func (l *Listener) trackState(nc net.Conn, st http.ConnState) {
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	l.mu.Lock()
	if st == http.StateIdle {
		l.idle[c] = struct{}{}
	} else {
		delete(l.idle, c)
	}
	l.mu.Unlock()
}

// Addr is the socket's address; for a unix socket, its final path.
func (l *Listener) Addr() net.Addr {
	if l.path != "" {
		return &net.UnixAddr{Name: l.path, Net: "unix"}
	}
	return l.Listener.Addr()
}

// Spec is the socket in the notation Listen and Dial take.
func (l *Listener) Spec() string {
	if l.path != "" {
		return "unix:" + l.path
	}
	return "inet:" + l.Listener.Addr().String()
}

// Close stops listening and removes the unix socket if it is still ours.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() {
		if l.path == "" || l.inode == nil {
			return
		}
		if fi, e := os.Lstat(l.path); e == nil && os.SameFile(fi, l.inode) {
			_ = os.Remove(l.path)
		}
	})
	return err
}

// conn frees its slot once closed and names a unix peer by its credentials
// (the remote address of a unix socket says nothing).
type conn struct {
	net.Conn
	peer    net.Addr
	release func()
	once    sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func (c *conn) RemoteAddr() net.Addr {
	if c.peer != nil {
		return c.peer
	}
	return c.Conn.RemoteAddr()
}

// unixPeer is a unix socket peer as its credentials: "unix:pid=42,uid=0".
type unixPeer string

func (unixPeer) Network() string  { return "unix" }
func (p unixPeer) String() string { return string(p) }
