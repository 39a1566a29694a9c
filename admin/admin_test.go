package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sessioncap/sessioncap/counters"
)

// fakeBackend answers with its function fields; a nil field gives a
// harmless default.
type fakeBackend struct {
	bans   func(context.Context) ([]counters.Ban, error)
	unban  func(context.Context, string) ([]string, error)
	ban    func(context.Context, string, time.Duration, string) (counters.Ban, error)
	reload func(context.Context) error
	status func(context.Context) (Status, error)
}

func (f *fakeBackend) Bans(ctx context.Context) ([]counters.Ban, error) {
	if f.bans == nil {
		return nil, nil
	}
	return f.bans(ctx)
}

func (f *fakeBackend) Unban(ctx context.Context, target string) ([]string, error) {
	if f.unban == nil {
		return nil, nil
	}
	return f.unban(ctx, target)
}

func (f *fakeBackend) Ban(ctx context.Context, target string, d time.Duration, reason string) (counters.Ban, error) {
	if f.ban == nil {
		return counters.Ban{Key: "freq:" + target, Reason: reason, Until: time.Now().Add(d)}, nil
	}
	return f.ban(ctx, target, d, reason)
}

func (f *fakeBackend) Reload(ctx context.Context) error {
	if f.reload == nil {
		return nil
	}
	return f.reload(ctx)
}

func (f *fakeBackend) Status(ctx context.Context) (Status, error) {
	if f.status == nil {
		return Status{Version: "test", Mode: "enforce", StoreBackend: "memory", StoreUp: true}, nil
	}
	return f.status(ctx)
}

// syncBuffer collects log output written from server goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// sockDir is a short directory for unix sockets (their paths are limited
// to about 100 bytes, which t.TempDir can exceed).
func sockDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "scadm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// serve runs the real admin server for b on spec and returns the spec to
// dial (the real port for inet:…:0) and the log.
func serve(t testing.TB, b Backend, spec, tokenFile string) (string, *syncBuffer) {
	t.Helper()
	ln, err := Listen(spec, tokenFile, "")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv := NewServer(ln, b, Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.(*Listener).Spec(), logs
}

func serveUnix(t testing.TB, b Backend) (string, *syncBuffer) {
	return serve(t, b, "unix:"+filepath.Join(sockDir(t), "admin.sock"), "")
}

// rawRequest sends one HTTP request over the admin socket and returns the
// status and body.
func rawRequest(t *testing.T, spec, method, path, contentType, body string, header ...string) (int, string) {
	t.Helper()
	network, address, err := ParseSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, address)
		},
	}}
	req, err := http.NewRequest(method, "http://sessioncap"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e ErrorResponse
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return resp.StatusCode, e.Error
	}
	return resp.StatusCode, string(b)
}

func writeToken(t *testing.T, token string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return path
}

// TestAdminUnixRoundTrip drives every endpoint through the real Client
// over a unix socket and checks what the backend got and what was logged.
func TestAdminUnixRoundTrip(t *testing.T) {
	since := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	want := []counters.Ban{
		{Key: "freq:192.0.2.0/24", Reason: "frequency", Since: since, Until: since.Add(5 * time.Minute), Host: "mx1"},
		{Key: "freq:override1:2001:db8::/64", Reason: "manual", Since: since, Until: since.Add(time.Hour), Host: "mx2"},
	}
	var got struct {
		unban, ban, reason string
		d                  time.Duration
		reloads            int
	}
	loaded := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	b := &fakeBackend{
		bans: func(context.Context) ([]counters.Ban, error) { return want, nil },
		unban: func(_ context.Context, target string) ([]string, error) {
			got.unban = target
			return []string{"freq:192.0.2.0/24", "freq:override1:192.0.2.0/24"}, nil
		},
		ban: func(_ context.Context, target string, d time.Duration, reason string) (counters.Ban, error) {
			got.ban, got.d, got.reason = target, d, reason
			return counters.Ban{Key: "freq:198.51.100.0/24", Reason: reason, Since: since, Until: since.Add(d), Host: "mx1"}, nil
		},
		reload: func(context.Context) error { got.reloads++; return nil },
		status: func(context.Context) (Status, error) {
			return Status{Version: "1.2.3", Mode: "monitor", StoreBackend: "redis", StoreUp: true, SessionsActive: 7,
				Bans: 2, Tracked: 1234, ConfigPath: "/etc/sessioncap/sessioncap.toml", ConfigLoaded: loaded}, nil
		},
	}
	spec, logs := serveUnix(t, b)
	c := Dial(spec, "")
	ctx := context.Background()

	bans, err := c.Bans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(bans.Bans, want) || time.Since(bans.Now) > time.Minute {
		t.Errorf("bans: got %+v, want %+v", bans, want)
	}

	keys, err := c.Unban(ctx, " ::ffff:192.0.2.7 ")
	if err != nil {
		t.Fatal(err)
	}
	if got.unban != "192.0.2.7" || len(keys) != 2 || keys[1] != "freq:override1:192.0.2.0/24" {
		t.Errorf("unban: backend got %q, client got %q", got.unban, keys)
	}

	ban, err := c.Ban(ctx, "198.51.100.0/24", 6*time.Hour, "spam run")
	if err != nil {
		t.Fatal(err)
	}
	if got.ban != "198.51.100.0/24" || got.d != 6*time.Hour || got.reason != "spam run" || ban.Until != since.Add(6*time.Hour) {
		t.Errorf("ban: backend got %q %s %q, client got %+v", got.ban, got.d, got.reason, ban)
	}
	if _, err := c.Ban(ctx, "2001:db8::1", time.Minute, ""); err != nil || got.reason != "" {
		t.Errorf("ban without a reason: err %v, reason %q, want none (the origin says manual)", err, got.reason)
	}

	if err := c.Reload(ctx); err != nil || got.reloads != 1 {
		t.Errorf("reload: %v, %d reloads", err, got.reloads)
	}

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "1.2.3" || st.StoreBackend != "redis" || !st.StoreUp || st.SessionsActive != 7 || st.Tracked != 1234 || !st.ConfigLoaded.Equal(loaded) {
		t.Errorf("status: %+v", st)
	}

	log := logs.String()
	for _, want := range []string{
		`action=unban target=192.0.2.7 keys="[freq:192.0.2.0/24 freq:override1:192.0.2.0/24]" remote="unix:pid=`,
		`action=ban target=198.51.100.0/24 keys=[freq:198.51.100.0/24] remote="unix:pid=`,
		`action=reload remote="unix:pid=`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
	if uid := fmt.Sprintf(",uid=%d", os.Getuid()); !strings.Contains(log, uid) {
		t.Errorf("log does not name the peer's uid (%s):\n%s", uid, log)
	}
}

// TestAdminTCPWithoutTokenFileRefused: no TCP listener without a token.
func TestAdminTCPWithoutTokenFileRefused(t *testing.T) {
	ln, err := Listen("inet:127.0.0.1:0", "", "")
	if err == nil {
		ln.Close()
		t.Fatal("listened on TCP without a token file")
	}
	if !strings.Contains(err.Error(), "admin.token_file") {
		t.Errorf("error does not name admin.token_file: %v", err)
	}
}

// TestAdminTokenFileChecks: a token file others can read, an empty one or
// a missing one is refused, by the server and by the client alike.
func TestAdminTokenFileChecks(t *testing.T) {
	for _, tc := range []struct {
		name, token string
		mode        os.FileMode
		want        string
	}{
		{"world-readable", "s3cret-token", 0o644, "accessible by others (mode 0644)"},
		{"world-writable", "s3cret-token", 0o602, "accessible by others"},
		{"empty", " \n", 0o600, "is empty"},
		{"two lines", "abc\ndef\n", 0o600, "one line of printable ASCII"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeToken(t, tc.token, tc.mode)
			if ln, err := Listen("inet:127.0.0.1:0", path, ""); err == nil {
				ln.Close()
				t.Fatal("listened with a bad token file")
			} else if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Listen: %v, want %q", err, tc.want)
			}
			if _, err := Dial("inet:127.0.0.1:1", path).Status(context.Background()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("client: %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Listen("inet:127.0.0.1:0", filepath.Join(t.TempDir(), "missing"), ""); err == nil {
		t.Error("listened with a missing token file")
	}
}

// TestAdminTCPToken: over TCP a request needs the right bearer token.
func TestAdminTCPToken(t *testing.T) {
	good := writeToken(t, "correct-horse-battery-staple\n", 0o640)
	bad := writeToken(t, "correct-horse-battery-stapler", 0o600)
	spec, logs := serve(t, &fakeBackend{}, "inet:127.0.0.1:0", good)
	ctx := context.Background()

	var e *Error
	if _, err := Dial(spec, "").Status(ctx); !errors.As(err, &e) || e.Status != http.StatusUnauthorized || !strings.Contains(err.Error(), "-token-file") {
		t.Errorf("no token: %v, want 401 naming -token-file", err)
	}
	if err := Dial(spec, bad).Reload(ctx); !errors.As(err, &e) || e.Status != http.StatusUnauthorized {
		t.Errorf("wrong token: %v, want 401", err)
	}
	if code, _ := rawRequest(t, spec, "GET", "/v1/status", "", "", "Authorization", "Basic Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ=="); code != http.StatusUnauthorized {
		t.Errorf("basic auth: status %d, want 401", code)
	}
	if code, _ := rawRequest(t, spec, "GET", "/v1/status", "", "", "Authorization", "Bearer "); code != http.StatusUnauthorized {
		t.Errorf("empty bearer: status %d, want 401", code)
	}
	if st, err := Dial(spec, good).Status(ctx); err != nil || st.Version != "test" {
		t.Errorf("right token: %+v, %v", st, err)
	}
	if code, _ := rawRequest(t, spec, "GET", "/v1/status", "", "", "Authorization", "bearer correct-horse-battery-staple"); code != http.StatusOK {
		t.Errorf("right token, raw: status %d, want 200", code)
	}
	if !strings.Contains(logs.String(), "action=auth remote=127.0.0.1:") {
		t.Errorf("refusals not logged:\n%s", logs)
	}
}

// TestAdminHandlerFailsClosedOverTCP: a handler given no token and served
// on a TCP listener of its own (a wiring mistake) refuses everything.
func TestAdminHandlerFailsClosedOverTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: NewHandler(&fakeBackend{}, Options{})}
	go srv.Serve(ln)
	defer srv.Close()
	if code, body := rawRequest(t, "inet:"+ln.Addr().String(), "POST", "/v1/reload", "", ""); code != http.StatusUnauthorized || !strings.Contains(body, "admin.token_file") {
		t.Errorf("status %d %s, want 401 naming admin.token_file", code, body)
	}
}

// TestAdminUnixAcceptsToken: over the unix socket a token is optional, but
// one that is sent is checked.
func TestAdminUnixAcceptsToken(t *testing.T) {
	path := writeToken(t, "tok-123", 0o600)
	spec, _ := serve(t, &fakeBackend{}, "unix:"+filepath.Join(sockDir(t), "a.sock"), path)
	if _, err := Dial(spec, "").Status(context.Background()); err != nil {
		t.Errorf("no token over unix: %v", err)
	}
	if _, err := Dial(spec, path).Status(context.Background()); err != nil {
		t.Errorf("right token over unix: %v", err)
	}
	if code, _ := rawRequest(t, spec, "GET", "/v1/status", "", "", "Authorization", "Bearer nope"); code != http.StatusUnauthorized {
		t.Errorf("wrong token over unix: status %d, want 401", code)
	}
}

// TestAdminBadRequests: bodies, fields, targets and durations the API
// refuses, each with a clear status and message; the backend is not called.
func TestAdminBadRequests(t *testing.T) {
	called := false
	b := &fakeBackend{
		unban: func(context.Context, string) ([]string, error) { called = true; return nil, nil },
		ban: func(context.Context, string, time.Duration, string) (counters.Ban, error) {
			called = true
			return counters.Ban{}, nil
		},
		reload: func(context.Context) error { called = true; return nil },
	}
	spec, _ := serveUnix(t, b)
	const js = "application/json"
	for _, tc := range []struct {
		name, method, path, ct, body string
		code                         int
		want                         string
	}{
		{"oversized", "POST", "/v1/unban", js, `{"target":"` + strings.Repeat("1", 5000) + `"}`, 413, "over 4096 bytes"},
		{"unknown field", "POST", "/v1/unban", js, `{"target":"192.0.2.1","all":true}`, 400, `unknown field "all"`},
		{"two objects", "POST", "/v1/unban", js, `{"target":"192.0.2.1"}{"target":"192.0.2.2"}`, 400, "data after the object"},
		{"not json", "POST", "/v1/unban", js, `target=192.0.2.1`, 400, "bad JSON body"},
		{"empty", "POST", "/v1/unban", js, ``, 400, "empty request body"},
		{"form", "POST", "/v1/unban", "application/x-www-form-urlencoded", `target=192.0.2.1`, 415, "application/json"},
		{"no content type", "POST", "/v1/ban", "", `{"target":"192.0.2.1","for":"1h"}`, 415, "application/json"},
		{"wrong type", "POST", "/v1/unban", js, `{"target":17}`, 400, "bad JSON body"},
		{"empty target", "POST", "/v1/unban", js, `{"target":""}`, 400, "empty target"},
		{"garbage target", "POST", "/v1/unban", js, `{"target":"mx.example.com"}`, 400, "not an address or a prefix"},
		{"bad address", "POST", "/v1/unban", js, `{"target":"300.1.1.1"}`, 400, "not an address or a prefix"},
		{"zone", "POST", "/v1/unban", js, `{"target":"fe80::1%eth0"}`, 400, "not an address or a prefix"},
		{"prefix too long", "POST", "/v1/ban", js, `{"target":"192.0.2.0/33","for":"1h"}`, 400, "not an address or a prefix"},
		{"host bits", "POST", "/v1/ban", js, `{"target":"192.0.2.5/24","for":"1h"}`, 400, "did you mean 192.0.2.0/24?"},
		{"no duration", "POST", "/v1/ban", js, `{"target":"192.0.2.1"}`, 400, "ban duration"},
		{"zero duration", "POST", "/v1/ban", js, `{"target":"192.0.2.1","for":"0s"}`, 400, "want more than 0"},
		{"negative duration", "POST", "/v1/ban", js, `{"target":"192.0.2.1","for":"-1h"}`, 400, "want more than 0"},
		{"not a duration", "POST", "/v1/ban", js, `{"target":"192.0.2.1","for":"7x"}`, 400, "want a duration such as 90m, 6h, 7d or 2w"},
		{"weeks over a year", "POST", "/v1/ban", js, `{"target":"192.0.2.1","for":"53w"}`, 400, "at most 8760h"},
		{"over a year", "POST", "/v1/ban", js, `{"target":"192.0.2.1","for":"8761h"}`, 400, "at most 8760h"},
		{"control in reason", "POST", "/v1/ban", js, `{"target":"192.0.2.1","for":"1h","reason":"a\nb"}`, 400, "control characters"},
		{"reload with body", "POST", "/v1/reload", js, `{"force":true}`, 400, `unknown field "force"`},
		{"wrong method", "GET", "/v1/unban", "", "", 405, "want POST"},
		{"unknown path", "GET", "/-/unban", "", "", 404, "no such endpoint"},
		{"cross-site", "POST", "/v1/reload", "", "", 403, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.name == "cross-site" {
				hdr = []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"}
			}
			called = false
			code, body := rawRequest(t, spec, tc.method, tc.path, tc.ct, tc.body, hdr...)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Errorf("status %d %s, want %d with %q", code, body, tc.code, tc.want)
			}
			if called {
				t.Error("the backend was called")
			}
		})
	}
}

// TestAdminBackendErrors: a backend's refusal of a target is a 400, its
// failure a 500, and a failed reload is a 500 whose message reaches the
// client.
func TestAdminBackendErrors(t *testing.T) {
	b := &fakeBackend{
		unban: func(context.Context, string) ([]string, error) {
			return nil, fmt.Errorf("%w: 192.0.0.0/16 is shorter than the ban prefix /24", ErrInvalid)
		},
		bans:   func(context.Context) ([]counters.Ban, error) { return nil, errors.New("redis: connection refused") },
		reload: func(context.Context) error { return errors.New(`/etc/sessioncap/sessioncap.toml:3: unknown key "mxa"`) },
	}
	spec, logs := serveUnix(t, b)
	c := Dial(spec, "")
	ctx := context.Background()
	var e *Error
	if _, err := c.Unban(ctx, "192.0.0.0/16"); !errors.As(err, &e) || e.Status != 400 || err.Error() != "192.0.0.0/16 is shorter than the ban prefix /24" {
		t.Errorf("unban: %v", err)
	}
	if _, err := c.Bans(ctx); !errors.As(err, &e) || e.Status != 500 || !strings.Contains(err.Error(), "redis: connection refused") {
		t.Errorf("bans: %v", err)
	}
	err := c.Reload(ctx)
	if !errors.As(err, &e) || e.Status != 500 || !strings.Contains(err.Error(), `sessioncap.toml:3: unknown key "mxa"`) {
		t.Errorf("reload: %v, want a 500 with the config error", err)
	}
	if !strings.Contains(logs.String(), "level=ERROR msg=admin action=reload") {
		t.Errorf("failed reload not logged as an error:\n%s", logs)
	}
}

// TestAdminSocket: mode 0660 and the group asked for; a stale socket is
// replaced, a live one is not stolen, a file that is no socket is kept;
// Close removes the socket.
func TestAdminSocket(t *testing.T) {
	dir := sockDir(t)
	path := filepath.Join(dir, "admin.sock")

	// A stale socket, as a crash leaves it.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	g, err := user.LookupGroupId(fmt.Sprint(os.Getgid()))
	if err != nil {
		t.Skip("no name for our group:", err)
	}
	ln, err := Listen("unix:"+path, "", g.Name)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	srv := NewServer(ln, &fakeBackend{}, Options{})
	go srv.Serve(ln)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %s, want 0660", fi.Mode())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Gid) != os.Getgid() {
		t.Errorf("socket group %d, want %d", st.Gid, os.Getgid())
	}
	if _, err := Dial("unix:"+path, "").Status(context.Background()); err != nil {
		t.Fatal(err)
	}

	// A live socket is not stolen, and keeps working.
	if ln2, err := Listen("unix:"+path, "", ""); err == nil {
		ln2.Close()
		t.Fatal("took over a live socket")
	} else if !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("live socket: %v", err)
	}
	if _, err := Dial("unix:"+path, "").Status(context.Background()); err != nil {
		t.Errorf("the live server stopped answering: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("left files beside the socket: %v", entries)
	}

	srv.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}

	// Not a socket: refused and left alone.
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen("unix:"+path, "", ""); err == nil {
		ln.Close()
		t.Fatal("replaced a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Error("the regular file was changed")
	}

	// An absent group is ignored.
	os.Remove(path)
	ln, err = Listen("unix:"+path, "", "no-such-group-sessioncap-test")
	if err != nil {
		t.Fatalf("absent group: %v", err)
	}
	ln.Close()
}

// TestAdminClientUnreachable: the error says where it looked and what to
// check.
func TestAdminClientUnreachable(t *testing.T) {
	spec := "unix:" + filepath.Join(sockDir(t), "none.sock")
	_, err := Dial(spec, "").Status(context.Background())
	want := "cannot reach sessioncap at " + spec + ": "
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), "(is the daemon running? is -admin right?)") {
		t.Errorf("got %v, want %s… (is the daemon running? is -admin right?)", err, want)
	}
	if _, err := Dial("tcp:localhost:1", "").Bans(context.Background()); err == nil || !strings.Contains(err.Error(), "unknown socket type") {
		t.Errorf("bad spec: %v", err)
	}
}

// TestAdminSlowClientBounded: a client that opens a connection and sends
// nothing does not keep others out.
func TestAdminSlowClientBounded(t *testing.T) {
	spec, _ := serveUnix(t, &fakeBackend{})
	_, address, _ := ParseSpec(spec)
	c, err := net.Dial("unix", address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /v1/status HTTP/1.1\r\nHost: x\r\n") // headers never end
	if _, err := Dial(spec, "").Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The half-sent request is dropped at ReadHeaderTimeout (perhaps with
	// a 408 first).
	c.SetReadDeadline(time.Now().Add(readHeaderTimeout + 5*time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Errorf("the server kept a silent connection open: %v", err)
	}
}

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7",
		" 192.0.2.7\n":         "192.0.2.7",
		"::ffff:192.0.2.7":     "192.0.2.7",
		"2001:DB8::1":          "2001:db8::1",
		"192.0.2.0/24":         "192.0.2.0/24",
		"2001:db8::/64":        "2001:db8::/64",
		"::ffff:192.0.2.0/120": "192.0.2.0/24",
		"0.0.0.0/0":            "0.0.0.0/0",
	} {
		if got, err := ParseTarget(in); err != nil || got != want {
			t.Errorf("ParseTarget(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "192.0.2", "192.0.2.7/", "192.0.2.1/24", "2001:db8::1/64", "fe80::1%eth0", "::ffff:0.0.0.0/8", "192.0.2.0/24/8", "1.2.3.4 5.6.7.8"} {
		if got, err := ParseTarget(in); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseTarget(%q) = %q, %v; want an ErrInvalid", in, got, err)
		}
	}
}

func TestAdminParseSpec(t *testing.T) {
	for spec, want := range map[string]string{
		"unix:/run/sessioncap/admin.sock": "unix /run/sessioncap/admin.sock",
		"local:/run/x/../admin.sock":      "unix /run/admin.sock",
		"inet:127.0.0.1:9830":             "tcp4 127.0.0.1:9830",
		"inet:9830@127.0.0.1":             "tcp4 127.0.0.1:9830",
		"inet:[::1]:9830":                 "tcp6 [::1]:9830",
		"inet6:[::1]:9830":                "tcp6 [::1]:9830",
		"inet:localhost:9830":             "tcp4 localhost:9830",
	} {
		n, a, err := ParseSpec(spec)
		if got := n + " " + a; err != nil || got != want {
			t.Errorf("ParseSpec(%q) = %q, %v; want %q", spec, got, err, want)
		}
	}
	for _, spec := range []string{"", "unix:", "unix:admin.sock", "inet:127.0.0.1", "inet:127.0.0.1:", "tcp:127.0.0.1:1", "/run/admin.sock"} {
		if n, a, err := ParseSpec(spec); err == nil {
			t.Errorf("ParseSpec(%q) = %s %s, want an error", spec, n, a)
		}
	}
}

func TestAdminCoveredKeys(t *testing.T) {
	var bans []counters.Ban
	for _, k := range []string{"freq:192.0.2.0/24", "freq:override1:192.0.2.0/24", "freq:192.0.2.7/32", "freq:192.0.0.0/16",
		"freq:198.51.100.0/24", "freq:2001:db8::/64", "garbage"} {
		bans = append(bans, counters.Ban{Key: k})
	}
	for target, want := range map[string][]string{
		"192.0.2.7":      {"freq:192.0.2.0/24", "freq:override1:192.0.2.0/24", "freq:192.0.2.7/32", "freq:192.0.0.0/16"},
		"192.0.2.8":      {"freq:192.0.2.0/24", "freq:override1:192.0.2.0/24", "freq:192.0.0.0/16"},
		"192.0.2.0/25":   {"freq:192.0.2.0/24", "freq:override1:192.0.2.0/24", "freq:192.0.2.7/32", "freq:192.0.0.0/16"},
		"192.0.3.0/24":   {"freq:192.0.0.0/16"},
		"2001:db8::1":    {"freq:2001:db8::/64"},
		"203.0.113.1":    nil,
		"not a target":   nil,
		"::ffff:1.2.3.4": nil,
	} {
		if got := CoveredKeys(bans, target); !reflect.DeepEqual(got, want) {
			t.Errorf("CoveredKeys(%q) = %q, want %q", target, got, want)
		}
	}
}
