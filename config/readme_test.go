package config

import (
	"os"
	"regexp"
	"testing"
	"time"
)

// TestReadmeTryConfig: the config of README's "Try it in two minutes" loads
// and says what the block promises: 3 messages per session, 5 connections
// a minute, a ban of 2 minutes.
func TestReadmeTryConfig(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)cat > /tmp/try\.toml <<'END'\n(.*?)\nEND\n`).FindSubmatch(data)
	if m == nil {
		t.Fatal("README has no try.toml block")
	}
	cfg, err := Parse("try.toml", m[1])
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Rules.Default
	if p.Session.MaxMessages != 3 || p.Frequency.MaxConnections != 5 || p.Frequency.Window != time.Minute || p.Frequency.Ban != 2*time.Minute {
		t.Errorf("try.toml: session %+v frequency %+v", p.Session, p.Frequency)
	}
}
