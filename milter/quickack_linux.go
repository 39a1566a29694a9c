//go:build linux

package milter

import (
	"net"
	"syscall"
)

// quickAcker returns a function that makes the kernel acknowledge the data
// received so far at once instead of delaying the ACK by up to 40 ms, nil
// for connections other than TCP. Sendmail writes a macro packet and then the
// command as two small writes with Nagle's algorithm on: the command waits
// for the ACK of the macros, and a delayed ACK made every MAIL, RCPT and end
// of message take about 44 ms. Linux clears the flag by itself, so the guard
// sets it again each time it is needed (see ackNeeded).
func quickAcker(c net.Conn) func() {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	set := func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	}
	return func() { _ = raw.Control(set) }
}
