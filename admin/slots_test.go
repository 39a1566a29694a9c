package admin

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAdminUnauthorizedConnectionClosed: a request without the token over
// TCP is answered 401 and its connection closed, so that clients without the
// token cannot sit on the connection slots; the operator with the token is
// answered after maxConns of them.
func TestAdminUnauthorizedConnectionClosed(t *testing.T) {
	tokenFile := writeToken(t, "s3cret-token", 0o600)
	spec, _ := serve(t, &fakeBackend{}, "inet:127.0.0.1:0", tokenFile)
	addr := strings.TrimPrefix(spec, "inet:")
	for i := 0; i < maxConns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(idleTimeout / 2)) // a hang guard, well under the idle timeout
		if _, err := io.WriteString(c, "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body) // to EOF: the server closed the connection
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
			t.Fatalf("connection %d: %d, close %v, %s; want 401 and the connection closed", i, resp.StatusCode, resp.Close, body)
		}
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("connection %d after the 401: read %d, %v; want EOF", i, n, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), idleTimeout/2)
	defer cancel()
	if _, err := Dial(spec, tokenFile).Status(ctx); err != nil {
		t.Fatalf("the operator with the token: %v", err)
	}
}

// TestAdminIdleConnectionsYield: maxConns keep-alive connections idle
// between requests do not lock out a new one: it closes one of them instead
// of waiting for the idle timeout.
func TestAdminIdleConnectionsYield(t *testing.T) {
	tokenFile := writeToken(t, "s3cret-token", 0o600)
	spec, _ := serve(t, &fakeBackend{}, "inet:127.0.0.1:0", tokenFile)
	addr := strings.TrimPrefix(spec, "inet:")
	for i := 0; i < maxConns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("connection %d: %d, close %v; want 200 kept alive", i, resp.StatusCode, resp.Close)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), idleTimeout/2)
	defer cancel()
	if _, err := Dial(spec, tokenFile).Status(ctx); err != nil {
		t.Fatalf("a new connection with %d idle ones: %v", maxConns, err)
	}
}
