// Package socket parses the socket addresses sessioncap listens on, in the
// notation Postfix and Sendmail use for milters, and opens unix sockets with
// their permissions set before anyone can connect.
package socket

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// Parse reads unix:/PATH (or local:/PATH), inet:HOST:PORT, inet6:[ADDR]:PORT
// or Sendmail's inet:PORT@HOST, and returns the network ("unix", "tcp4",
// "tcp6") and address to listen on or dial. inet:[::1]:PORT is IPv6, as
// Postfix writes it.
func Parse(spec string) (network, address string, err error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("%q: want inet:HOST:PORT, inet6:[ADDR]:PORT or unix:/PATH", spec)
	}
	switch kind {
	case "unix", "local":
		if !filepath.IsAbs(rest) {
			return "", "", fmt.Errorf("%q: the unix socket path must be absolute", spec)
		}
		return "unix", filepath.Clean(rest), nil
	case "inet", "inet6":
		if port, host, ok := strings.Cut(rest, "@"); ok { // Sendmail: inet:PORT@HOST
			rest = net.JoinHostPort(host, port)
		}
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return "", "", fmt.Errorf("%q: %v", spec, err)
		}
		if port == "" {
			return "", "", fmt.Errorf("%q: missing port", spec)
		}
		network := "tcp4"
		if ip, err := netip.ParseAddr(host); err == nil && ip.Is6() && !ip.Is4In6() {
			network = "tcp6"
		} else if kind == "inet6" {
			if err == nil {
				return "", "", fmt.Errorf("%q: inet6 needs an IPv6 address, got %s", spec, host)
			}
			network = "tcp6"
		}
		return network, net.JoinHostPort(host, port), nil
	}
	return "", "", fmt.Errorf("%q: unknown socket type %q (want inet, inet6 or unix)", spec, kind)
}

// ListenUnix binds a unix socket at path with mode 0660 and, when group
// names an existing group, that group. It binds in a private directory
// beside path, sets the permissions there and renames the socket into
// place, so nobody can connect before they are right. A stale socket left
// by a crash is replaced; one another process listens on is refused.
func ListenUnix(path, group string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process (is sessioncap already running?)", path)
		}
	}
	gid := -1
	if group != "" {
		if g, err := user.LookupGroup(group); err == nil {
			if gid, err = strconv.Atoi(g.Gid); err != nil {
				gid = -1
			}
		}
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".sessioncap-sock-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		return nil, err
	}
	if err := os.Chmod(tmp, 0o660); err != nil {
		return fail(err)
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fail(fmt.Errorf("giving %s to group %s: %w", path, group, err))
		}
	}
	if err := os.Rename(tmp, path); err != nil { // replaces a stale socket atomically
		return fail(err)
	}
	return ln, nil
}
