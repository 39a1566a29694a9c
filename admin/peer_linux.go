package admin

import (
	"fmt"
	"net"
	"syscall"
)

// peerAddr names a unix peer by the credentials the kernel recorded at
// connect (SO_PEERCRED).
func peerAddr(c *net.UnixConn) net.Addr {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return nil
	}
	return unixPeer(fmt.Sprintf("unix:pid=%d,uid=%d", cred.Pid, cred.Uid))
}
