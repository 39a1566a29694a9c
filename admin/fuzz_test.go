package admin

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzAdminRequest sends arbitrary bytes as a raw request to the real admin
// server over its unix socket, then checks that an ordinary GET /v1/status
// still works: hostile input never crashes or wedges the server.
func FuzzAdminRequest(f *testing.F) {
	for _, s := range []string{
		"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /v1/bans HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /v1/unban HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"target\":\"192.0.2.0/24\"}",
		"POST /v1/ban HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 41\r\n\r\n{\"target\":\"192.0.2.1\",\"for\":\"1h\",\"x\":1}",
		"POST /v1/ban HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n",
		"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{",
		"POST /v1/reload HTTP/1.0\r\nAuthorization: Bearer x\r\n\r\n",
		"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + string(make([]byte, 9000)) + "\r\n\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
		"",
	} {
		f.Add([]byte(s))
	}
	b := &fakeBackend{}
	spec, _ := serveUnix(f, b)
	_, address, _ := ParseSpec(spec)
	client := Dial(spec, "")
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("unix", address)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write(data)
		_ = c.(*net.UnixConn).CloseWrite()
		// The server answers what it can and closes; it must not hold the
		// connection past the input's end.
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("reading the answer to %q: %v", data, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if st, err := client.Status(ctx); err != nil || st.Version != "test" {
			t.Fatalf("after %q: status %+v, %v", data, st, err)
		}
	})
}
