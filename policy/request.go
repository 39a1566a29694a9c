package policy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
)

// Bounds of one request. Postfix sends about 30 attributes; the longest
// values are addresses and TLS certificate names (xtext), far below maxLine.
const (
	maxLine       = 8 << 10  // one name=value line, newline included
	maxRequest    = 64 << 10 // all lines of one request
	maxAttributes = 256
)

// state is a request's protocol_state.
type state uint8

// The protocol states Postfix sends (SMTPD_POLICY_README), and other for
// anything else (answered DUNNO).
const (
	stateOther state = iota
	stateConnect
	stateEHLO
	stateHELO
	stateMail
	stateRcpt
	stateData
	stateEOM
	stateVRFY
	stateETRN
	numStates
)

var stateNames = [numStates]string{
	stateOther: "other", stateConnect: "CONNECT", stateEHLO: "EHLO", stateHELO: "HELO", stateMail: "MAIL",
	stateRcpt: "RCPT", stateData: "DATA", stateEOM: "END-OF-MESSAGE", stateVRFY: "VRFY", stateETRN: "ETRN",
}

func parseState(v []byte) state {
	for s := stateConnect; s < numStates; s++ {
		if string(v) == stateNames[s] {
			return s
		}
	}
	return stateOther
}

// request is one policy request: the attributes sessioncap reads, parsed
// into buffers reused from request to request on one connection. Other
// attributes are ignored (Postfix adds attributes across versions).
type request struct {
	attrs int  // attribute lines read
	bytes int  // bytes read
	typed bool // request=smtpd_access_policy was seen
	state state

	clientAddr, clientPort []byte
	serverAddr, serverPort []byte
	instance, queueID      []byte
	saslUsername, sender   []byte
	recipient              []byte
	size                   int64 // -1 when absent or empty
	rcptCount              int64 // recipient_count; 0 when absent
}

func (r *request) reset() {
	*r = request{
		clientAddr: r.clientAddr[:0], clientPort: r.clientPort[:0],
		serverAddr: r.serverAddr[:0], serverPort: r.serverPort[:0],
		instance: r.instance[:0], queueID: r.queueID[:0], saslUsername: r.saslUsername[:0],
		sender: r.sender[:0], recipient: r.recipient[:0],
		size: -1,
	}
}

// protocolError is a request that breaks the protocol; reason is the label
// of sessioncap_policy_protocol_errors_total.
type protocolError struct{ reason string }

func (e *protocolError) Error() string { return "policy: protocol error: " + e.reason }

// The values of the reason label of sessioncap_policy_protocol_errors_total.
const (
	reasonLineTooLong    = "line_too_long"     // a line longer than maxLine
	reasonRequestTooBig  = "request_too_large" // more than maxRequest bytes or maxAttributes lines
	reasonMalformedLine  = "malformed_line"    // no "=", an empty name, or a NUL
	reasonBadRequestType = "bad_request"       // no request=smtpd_access_policy, or an empty request
	reasonTruncated      = "truncated_request" // the peer hung up inside a request
	reasonReadTimeout    = "read_timeout"      // silent for read_timeout, or a request not finished in requestTimeout
	reasonBadNumber      = "malformed_number"  // size or recipient_count that is not a decimal number (Postfix validated SIZE= already)
)

var protocolErrorReasons = []string{
	reasonLineTooLong, reasonRequestTooBig, reasonMalformedLine, reasonBadRequestType, reasonTruncated,
	reasonReadTimeout, reasonBadNumber,
}

// errNoRequest is a clean end of the connection between requests; errIdle
// is the read deadline passing before a request began.
var (
	errNoRequest = errors.New("policy: connection closed between requests")
	errIdle      = errors.New("policy: no request before the read deadline")
)

// read reads one request: name=value lines up to an empty line. The
// first line is awaited with whatever deadline the caller set; started is
// called once the first line is in, to set the deadline of the rest.
func (r *request) read(br *bufio.Reader, started func()) error {
	r.reset()
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			switch {
			case errors.Is(err, bufio.ErrBufferFull):
				return &protocolError{reasonLineTooLong}
			case r.bytes == 0 && len(line) == 0 && errors.Is(err, io.EOF):
				return errNoRequest
			case errors.Is(err, os.ErrDeadlineExceeded):
				if r.bytes == 0 && len(line) == 0 {
					return errIdle // the caller decides: idle timeout or shutdown
				}
				return &protocolError{reasonReadTimeout}
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				return &protocolError{reasonTruncated}
			}
			return err
		}
		if r.bytes == 0 && started != nil {
			started()
		}
		r.bytes += len(line)
		if r.bytes > maxRequest {
			return &protocolError{reasonRequestTooBig}
		}
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) == 0 {
			if r.attrs == 0 || !r.typed {
				return &protocolError{reasonBadRequestType}
			}
			return nil
		}
		if r.attrs++; r.attrs > maxAttributes {
			return &protocolError{reasonRequestTooBig}
		}
		eq := bytes.IndexByte(line, '=')
		if eq <= 0 || bytes.IndexByte(line, 0) >= 0 {
			return &protocolError{reasonMalformedLine}
		}
		if err := r.set(line[:eq], line[eq+1:]); err != nil {
			return err
		}
	}
}

// set records one attribute. When an attribute comes twice, the last value
// counts (SMTPD_POLICY_README allows either).
func (r *request) set(name, v []byte) error {
	switch string(name) {
	case "request":
		if string(v) != "smtpd_access_policy" {
			return &protocolError{reasonBadRequestType}
		}
		r.typed = true
	case "protocol_state":
		r.state = parseState(v)
	case "client_address":
		r.clientAddr = append(r.clientAddr[:0], v...)
	case "client_port":
		r.clientPort = append(r.clientPort[:0], v...)
	case "server_address":
		r.serverAddr = append(r.serverAddr[:0], v...)
	case "server_port":
		r.serverPort = append(r.serverPort[:0], v...)
	case "instance":
		r.instance = append(r.instance[:0], v...)
	case "queue_id":
		r.queueID = append(r.queueID[:0], v...)
	case "sasl_username":
		r.saslUsername = append(r.saslUsername[:0], v...)
	case "sender":
		r.sender = append(r.sender[:0], v...)
	case "recipient":
		r.recipient = append(r.recipient[:0], v...)
	case "size":
		r.size = -1
		if len(v) > 0 {
			n, ok := parseDecimal(v)
			if !ok {
				return &protocolError{reasonBadNumber}
			}
			r.size = n
		}
	case "recipient_count":
		n, ok := parseDecimal(v)
		if !ok && len(v) > 0 {
			return &protocolError{reasonBadNumber}
		}
		r.rcptCount = n
	}
	return nil
}

// parseDecimal reads a non-negative decimal number of at most 18 digits
// (no overflow) without allocating.
func parseDecimal(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parsePort reads a TCP port; 0 and anything unparseable give false.
func parsePort(v []byte) (uint16, bool) {
	n, ok := parseDecimal(v)
	if !ok || n <= 0 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}
