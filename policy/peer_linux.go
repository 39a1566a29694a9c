package policy

import (
	"net"
	"strconv"
	"syscall"
)

// unixPeer names the peer of a unix socket connection by its user id
// (SO_PEERCRED): every smtpd process of one Postfix runs as one user.
func unixPeer(nc net.Conn) string {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return "unix"
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "unix"
	}
	var cred *syscall.Ucred
	if err := raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cred == nil {
		return "unix"
	}
	return "uid " + strconv.FormatUint(uint64(cred.Uid), 10)
}
