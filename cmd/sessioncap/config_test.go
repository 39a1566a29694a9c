package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sessioncap/sessioncap/config"
)

func TestParseListen(t *testing.T) {
	tests := []struct{ spec, network, addr, err string }{
		{"inet:127.0.0.1:10029", "tcp4", "127.0.0.1:10029", ""},
		{"inet:10029@127.0.0.1", "tcp4", "127.0.0.1:10029", ""},
		{"inet6:[::1]:10029", "tcp6", "[::1]:10029", ""},
		{"inet6:10029@::1", "tcp6", "[::1]:10029", ""},
		{"inet:[::1]:10029", "tcp6", "[::1]:10029", ""},
		{"inet6:127.0.0.1:10029", "", "", "needs an IPv6 address"},
		{"unix:/run/sessioncap/milter.sock", "unix", "/run/sessioncap/milter.sock", ""},
		{"local:/run/x.sock", "unix", "/run/x.sock", ""},
		{"unix:relative.sock", "", "", "must be absolute"},
		{"inet:127.0.0.1", "", "", "missing port"},
		{"127.0.0.1:10029", "", "", "unknown socket type"},
		{"inet:", "", "", "want inet:HOST:PORT"},
	}
	for _, tt := range tests {
		n, a, err := config.ParseListen(tt.spec)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err %v, want %q", tt.spec, err, tt.err)
			}
			continue
		}
		if err != nil || n != tt.network || a != tt.addr {
			t.Errorf("%q: %s %s %v", tt.spec, n, a, err)
		}
	}
}

func TestAcceptedListenSpecsListen(t *testing.T) {
	for _, spec := range []string{"inet:127.0.0.1:0", "inet:0@127.0.0.1", "inet:[::1]:0", "inet6:[::1]:0"} {
		network, addr, err := config.ParseListen(spec)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		ln, err := listenMilter(network, addr)
		if err != nil {
			t.Fatalf("%s accepted but cannot listen: %v", spec, err)
		}
		ln.Close()
	}
}

func TestCheckConfigCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"check-config", "-config", "../../testdata/config/good-full.toml"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "good-full.toml: OK") || !strings.Contains(out.String(), "max_messages 1000") {
		t.Errorf("summary:\n%s", out.String())
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"check-config", "-config", "../../testdata/config/bad-values.toml"}, &out, &errOut); code != 78 {
		t.Fatalf("exit %d, want 78 (EX_CONFIG)", code)
	}
	if n := strings.Count(errOut.String(), "bad-values.toml:"); n != 9 {
		t.Errorf("%d errors reported, want 9 (both bad networks of one list):\n%s", n, errOut.String())
	}
	out.Reset()
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "sessioncap dev (go") {
		t.Errorf("version: %d %q", code, out.String())
	}
	if code := run([]string{"-no-such-flag"}, &out, &errOut); code != 78 {
		t.Errorf("bad flag: exit %d", code)
	}
}

func TestExplain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "explain.toml")
	if err := os.WriteFile(path, []byte(`
[sender_networks]
max_networks = 5
[[override]]
networks = ["192.0.2.0/24"]
[override.frequency]
max_connections = 1000
[[override]]
users = ["@Example.org"]
[override.session]
max_messages = 5000
mode = "monitor"
[[override]]
sender_domains = ["Lists.example.net"]
[override.errors]
max_per_session = 50
`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"-explain", "198.51.100.1", "-user", "alice@example.org", "-sender", "a@example.org"}, []string{
			"at connect: default policy, key 198.51.100.1/32",
			"from MAIL FROM: override[1] (users [@Example.org])",
			"session: max_messages 5000, max_bytes 104857600, max_recipients 1000, overrun accept, mode monitor",
			"sender_networks: skipped: authenticated",
		}},
		{[]string{"-explain", "198.51.100.1", "-sender", "<x@sub.lists.example.net>"}, []string{
			"from MAIL FROM: override[2] (sender_domains [lists.example.net])",
			"errors: max_per_session 50",
			"sender_networks: domain sub.lists.example.net from network 198.51.100.0/24, max_networks 5 per 24h0m0s, mode enforce",
		}},
		{[]string{"-explain", "192.0.2.9", "-user", "alice@example.org"}, []string{
			"at connect: override[0] (networks [192.0.2.0/24])",
			"frequency: max_connections 1000 per 1m0s",
			"from MAIL FROM: override[0] (networks [192.0.2.0/24])",
		}},
	} {
		code, out, errOut := runCLI(append([]string{"check-config", "-config", path}, c.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, errOut)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: no %q in:\n%s", c.args, w, out)
			}
		}
	}
	if code, _, errOut := runCLI("check-config", "-config", path, "-explain", "not-an-ip"); code != 78 || !strings.Contains(errOut, "not an IP address") {
		t.Errorf("bad address: exit %d: %s", code, errOut)
	}
	if code, _, _ := runCLI("check-config", "-config", path, "-user", "alice"); code != 78 {
		t.Errorf("-user without -explain: exit %d", code)
	}
}
