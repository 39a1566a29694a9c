// Command miltercheck drives SMTP sessions through a running sessioncap over
// the milter protocol, as Postfix would (connect, HELO, MAIL, RCPT, DATA,
// headers, body, end of message), and checks the replies. packaging/ci.sh
// uses it against the installed package.
//
//	go run ./packaging/internal/miltercheck -addr inet:127.0.0.1:10029
//	go run ./packaging/internal/miltercheck -messages 3 -refused-from 3 -refusal 421
//
// It exits 0 when every reply was what it expected, 1 otherwise.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	network, address string
	clientIP         string
	messages         int
	refusedFrom      int
	refusal          string
	connectRefusal   string
	timeout          time.Duration
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("miltercheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "inet:127.0.0.1:10029", "milter socket: inet:HOST:PORT, inet6:[ADDR]:PORT or unix:/PATH")
	var o options
	fs.StringVar(&o.clientIP, "client-ip", "192.0.2.10", "SMTP client address to report (connect and {client_addr}); 192.0.2.0/24 is not exempt by default")
	fs.IntVar(&o.messages, "messages", 1, "messages to send in the one session")
	fs.IntVar(&o.refusedFrom, "refused-from", 0, "expect message N's MAIL FROM to be refused (0: expect every message accepted)")
	fs.StringVar(&o.refusal, "refusal", "421", "reply code expected with -refused-from")
	fs.StringVar(&o.connectRefusal, "connect-refusal", "", "expect the connection itself to be refused with this reply code (e.g. 421)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "dial, read and write timeout")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 || o.messages < 1 || o.refusedFrom < 0 || o.refusedFrom > o.messages {
		fmt.Fprintln(stderr, "miltercheck: bad arguments (want -messages >= 1 and 0 <= -refused-from <= -messages)")
		return 2
	}
	var err error
	if o.network, o.address, err = parseSpec(*addr); err != nil {
		fmt.Fprintln(stderr, "miltercheck:", err)
		return 2
	}
	if err := check(o, stdout); err != nil {
		fmt.Fprintln(stderr, "miltercheck: FAIL:", err)
		return 1
	}
	return 0
}

// parseSpec turns Postfix milter notation into a Go network and address.
func parseSpec(spec string) (network, address string, err error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok || rest == "" {
		return "", "", fmt.Errorf("address %q: want inet:HOST:PORT, inet6:[ADDR]:PORT or unix:/PATH", spec)
	}
	switch kind {
	case "inet":
		return "tcp4", rest, nil
	case "inet6":
		return "tcp6", rest, nil
	case "unix", "local":
		return "unix", rest, nil
	}
	return "", "", fmt.Errorf("address %q: unknown socket type %q", spec, kind)
}

// errRefused is returned by step when the milter refused the command.
var errRefused = errors.New("refused")

// errAccepted is returned by step when the milter accepted the rest of the
// message (or session): the MTA sends it no more callbacks for it.
var errAccepted = errors.New("accepted")

func check(o options, out io.Writer) error {
	family := gomilter.FamilyInet
	if strings.Contains(o.clientIP, ":") {
		family = gomilter.FamilyInet6
	}
	client := gomilter.NewClient(o.network, o.address,
		gomilter.WithReadTimeout(o.timeout), gomilter.WithWriteTimeout(o.timeout),
		// Postfix offers these actions; sessioncap needs none of them.
		gomilter.WithActions(gomilter.OptAddHeader|gomilter.OptChangeBody|gomilter.OptAddRcpt|gomilter.OptRemoveRcpt|gomilter.OptChangeHeader|gomilter.OptQuarantine|gomilter.OptChangeFrom|gomilter.OptAddRcptWithArgs|gomilter.OptSetMacros))
	macros := gomilter.NewMacroBag()
	macros.Set(gomilter.MacroMTAFQDN, "mx.test")
	macros.Set(gomilter.MacroDaemonName, "miltercheck")
	macros.Set(gomilter.MacroClientAddr, o.clientIP)
	macros.Set(gomilter.MacroClientName, "client.test")
	macros.Set(gomilter.MacroIfAddr, "127.0.0.1")
	sess, err := client.Session(macros)
	if err != nil {
		return fmt.Errorf("connect to milter %s:%s: %w", o.network, o.address, err)
	}
	defer sess.Close()
	fmt.Fprintf(out, "milter %s:%s negotiated\n", o.network, o.address)

	step := func(name string, call func() (*gomilter.Action, error)) error {
		act, err := call()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(out, "  %-28s %s\n", name, act)
		switch act.Type {
		case gomilter.ActionContinue, gomilter.ActionSkip:
			return nil
		case gomilter.ActionAccept:
			return errAccepted
		case gomilter.ActionDiscard:
			return fmt.Errorf("%s: the milter discarded the message", name)
		}
		if act.StopProcessing() {
			return fmt.Errorf("%s: %w: %s", name, errRefused, strings.TrimSpace(act.SMTPReply))
		}
		return fmt.Errorf("%s: unexpected action %s", name, act)
	}

	err = step("connect "+o.clientIP, func() (*gomilter.Action, error) { return sess.Conn("client.test", family, 40000, o.clientIP) })
	if o.connectRefusal != "" {
		if err == nil || !errors.Is(err, errRefused) || !strings.Contains(err.Error(), errRefused.Error()+": "+o.connectRefusal) {
			return fmt.Errorf("connect: got %v, want a refusal with %s", err, o.connectRefusal)
		}
		fmt.Fprintf(out, "connection refused as expected: %v\n", err)
		return nil
	}
	if err != nil {
		if errors.Is(err, errAccepted) && o.refusedFrom == 0 {
			fmt.Fprintln(out, "session accepted at connect (exempt?)")
			return nil
		}
		return err
	}
	if err := step("helo client.test", func() (*gomilter.Action, error) { return sess.Helo("client.test") }); err != nil {
		return err
	}

	for n := 1; n <= o.messages; n++ {
		wantRefusal := n == o.refusedFrom
		err := sendMessage(sess, macros, n, step)
		switch {
		case err == nil || errors.Is(err, errAccepted):
			if wantRefusal {
				return fmt.Errorf("message %d: accepted, want MAIL FROM refused with %s", n, o.refusal)
			}
			fmt.Fprintf(out, "message %d accepted\n", n)
		case errors.Is(err, errRefused) && wantRefusal:
			if !strings.Contains(err.Error(), "mail from: "+errRefused.Error()+": "+o.refusal) {
				return fmt.Errorf("message %d: %v; want MAIL FROM refused with %s", n, err, o.refusal)
			}
			fmt.Fprintf(out, "message %d refused as expected: %v\n", n, err)
			return nil
		default:
			return fmt.Errorf("message %d: %w", n, err)
		}
	}
	fmt.Fprintf(out, "miltercheck: OK, %d message(s) accepted\n", o.messages)
	return nil
}

func sendMessage(sess *gomilter.ClientSession, macros *gomilter.MacroBag, n int,
	step func(string, func() (*gomilter.Action, error)) error) error {
	body := fmt.Sprintf("Message %d from miltercheck.\r\n%s\r\n", n, strings.Repeat("x", 70))
	// Like Postfix, which has no queue id before DATA.
	macros.Set(gomilter.MacroQueueId, "")
	macros.Set(gomilter.MacroMailAddr, "sender@example.org")
	if err := step("mail from", func() (*gomilter.Action, error) {
		return sess.Mail("<sender@example.org>", fmt.Sprintf("SIZE=%d", len(body)+200))
	}); err != nil {
		return err
	}
	macros.Set(gomilter.MacroRcptAddr, "rcpt@example.net")
	if err := step("rcpt to", func() (*gomilter.Action, error) { return sess.Rcpt("<rcpt@example.net>", "") }); err != nil {
		return err
	}
	macros.Set(gomilter.MacroQueueId, fmt.Sprintf("MC%04d", n))
	if err := step("data", func() (*gomilter.Action, error) { return sess.DataStart() }); err != nil {
		return err
	}
	for _, h := range [][2]string{
		{"From", "<sender@example.org>"},
		{"To", "<rcpt@example.net>"},
		{"Subject", fmt.Sprintf("miltercheck %d", n)},
		{"Message-ID", fmt.Sprintf("<miltercheck-%d@example.org>", n)},
	} {
		if err := step("header "+h[0], func() (*gomilter.Action, error) { return sess.HeaderField(h[0], h[1], nil) }); err != nil {
			return err
		}
	}
	if err := step("end of headers", func() (*gomilter.Action, error) { return sess.HeaderEnd() }); err != nil {
		return err
	}
	if err := step(fmt.Sprintf("body (%d bytes)", len(body)), func() (*gomilter.Action, error) { return sess.BodyChunk([]byte(body)) }); err != nil {
		return err
	}
	end := func() (*gomilter.Action, error) {
		_, act, err := sess.End()
		return act, err
	}
	if err := step("end of message", end); err != nil {
		return err
	}
	// Postfix sends an abort after every end of message; go-milter would
	// synthesise it anyway.
	return nil
}
