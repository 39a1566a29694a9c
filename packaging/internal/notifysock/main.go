// Command notifysock stands in for systemd's notification socket: it binds
// a unix datagram socket, prints every message a service sends to it
// (READY=1, RELOADING=1, STOPPING=1, ...) one per line, and exits on
// SIGTERM or after -timeout. packaging/ci.sh runs sessioncap with
// NOTIFY_SOCKET pointing here to check the Type=notify protocol where no
// systemd runs.
//
//	notifysock -socket /tmp/notify.sock >notify.log &
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("notifysock", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("socket", "", "path of the datagram socket to create (required)")
	timeout := fs.Duration("timeout", 5*time.Minute, "exit after this long")
	if err := fs.Parse(args); err != nil || *path == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: notifysock -socket PATH [-timeout DURATION]")
		return 2
	}
	_ = os.Remove(*path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: *path, Net: "unixgram"})
	if err != nil {
		fmt.Fprintln(stderr, "notifysock:", err)
		return 1
	}
	defer os.Remove(*path)
	// The service may run as another user.
	if err := os.Chmod(*path, 0o666); err != nil {
		fmt.Fprintln(stderr, "notifysock:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return 0
		}
		for line := range strings.SplitSeq(strings.TrimSpace(string(buf[:n])), "\n") {
			fmt.Fprintln(stdout, line)
		}
	}
}
