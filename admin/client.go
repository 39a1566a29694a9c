package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/sessioncap/sessioncap/counters"
)

// clientTimeout bounds each call of a Client.
const clientTimeout = 10 * time.Second

// maxAnswer bounds an answer the client reads (a long list of bans).
const maxAnswer = 64 << 20

// Client speaks the admin API of a running sessioncap.
type Client struct {
	spec  string
	base  string // http://host:port
	token string
	err   error // from the spec or the token file, returned by every call
	hc    *http.Client
}

// Dial returns a client for the daemon at spec (unix:/PATH or
// inet:HOST:PORT), sending the token of tokenFile when one is given. It
// connects on each call; errors of spec or token file come back from the
// calls.
func Dial(spec, tokenFile string) *Client {
	c := &Client{spec: spec, base: "http://sessioncap"}
	network, address, err := ParseSpec(spec)
	if err != nil {
		c.err = err
		return c
	}
	if tokenFile != "" {
		if c.token, err = ReadToken(tokenFile); err != nil {
			c.err = err
			return c
		}
	}
	if network != "unix" {
		c.base = "http://" + address
	}
	var d net.Dialer
	c.hc = &http.Client{
		Timeout: clientTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, address)
			},
			DisableKeepAlives:     true,
			ResponseHeaderTimeout: clientTimeout,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// Error is an answer of the daemon other than success.
type Error struct {
	Status  int    // HTTP status
	Message string // the daemon's explanation
}

func (e *Error) Error() string {
	if e.Status == http.StatusUnauthorized {
		return e.Message + " (is -token-file right?)"
	}
	return e.Message
}

// Bans lists the bans in force, with the daemon's clock.
func (c *Client) Bans(ctx context.Context) (BansResponse, error) {
	var resp BansResponse
	err := c.call(ctx, http.MethodGet, "/v1/bans", nil, &resp)
	return resp, err
}

// Unban lifts the bans covering target and returns the keys lifted.
func (c *Client) Unban(ctx context.Context, target string) ([]string, error) {
	var resp UnbanResponse
	err := c.call(ctx, http.MethodPost, "/v1/unban", UnbanRequest{Target: target}, &resp)
	return resp.Keys, err
}

// Ban bans target for d.
func (c *Client) Ban(ctx context.Context, target string, d time.Duration, reason string) (counters.Ban, error) {
	var resp BanResponse
	err := c.call(ctx, http.MethodPost, "/v1/ban", BanRequest{Target: target, For: d.String(), Reason: reason}, &resp)
	return resp.Ban, err
}

// Reload asks the daemon to re-read its configuration; the error carries
// the daemon's reason when it refused the file.
func (c *Client) Reload(ctx context.Context) error {
	var resp ReloadResponse
	return c.call(ctx, http.MethodPost, "/v1/reload", nil, &resp)
}

// Status describes the running daemon.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	if c.err != nil {
		return c.err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("sessioncap at %s: reading the answer: %w", c.spec, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
		}
		return &Error{Status: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("sessioncap at %s: bad answer to %s %s: %w", c.spec, method, path, err)
	}
	return nil
}

// unreachable explains a failed round trip in the operator's terms.
func (c *Client) unreachable(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		hint := "is the daemon running? is -admin right?"
		if errors.Is(err, fs.ErrPermission) {
			hint = "run as root or as a member of the socket's group"
		}
		return fmt.Errorf("cannot reach sessioncap at %s: %v (%s)", c.spec, op.Err, hint)
	}
	return fmt.Errorf("sessioncap at %s did not answer: %w (is the daemon running? is -admin right?)", c.spec, err)
}
