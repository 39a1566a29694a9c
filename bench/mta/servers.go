package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	gomilter "github.com/d--j/go-milter"
)

// serve runs one of the benchmark's own servers in this process until
// SIGTERM or SIGINT; the benchmark starts it as a child of its own so that
// its CPU time is its own.
func serve(kind, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch kind {
	case "noop-milter":
		// go-milter's NoOpMilter with the library's default options: what
		// a milter that does nothing costs Postfix.
		srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return gomilter.NoOpMilter{} }))
		go func() { <-ctx.Done(); srv.Close() }()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, gomilter.ErrServerClosed) && ctx.Err() == nil {
			return err
		}
		return nil
	case "minimal-policy":
		go func() { <-ctx.Done(); ln.Close() }()
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			go minimalPolicy(c)
		}
	}
	return fmt.Errorf("unknown server %q", kind)
}

// minimalPolicy answers every Postfix policy request on c with DUNNO: the
// least a policy server can do. Requests are name=value lines ended by an
// empty line; a line longer than the buffer closes the connection.
func minimalPolicy(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriter(c)
	attrs := 0
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		if len(line) > 1 && !(len(line) == 2 && line[0] == '\r') {
			attrs++
			continue
		}
		if attrs == 0 {
			continue
		}
		attrs = 0
		w.WriteString("action=DUNNO\n\n")
		if r.Buffered() == 0 {
			if w.Flush() != nil {
				return
			}
		}
	}
}

func serveMain(args []string) {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: mta serve noop-milter|minimal-policy HOST:PORT")
		os.Exit(2)
	}
	if err := serve(args[0], args[1]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
