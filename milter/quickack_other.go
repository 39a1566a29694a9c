//go:build !linux

package milter

import "net"

// quickAcker is Linux only; elsewhere the delayed ACK stays.
func quickAcker(net.Conn) func() { return nil }
