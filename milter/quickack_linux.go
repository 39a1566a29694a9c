//go:build linux

package milter

import (
	"net"
	"syscall"
)

// quickAck makes the kernel acknowledge received data at once instead of
// delaying the ACK by up to 40 ms. Sendmail writes a macro packet and then the
// command as two small writes with Nagle's algorithm on: the command waits for
// the ACK of the macros, and a delayed ACK made every MAIL, RCPT and end of
// message take about 44 ms. Linux resets the flag by itself, so it is set
// again after every read.
func quickAck(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &quickAckConn{TCPConn: tc, raw: raw}
}

type quickAckConn struct {
	*net.TCPConn
	raw syscall.RawConn
}

func (c *quickAckConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	if n > 0 {
		_ = c.raw.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
		})
	}
	return n, err
}
