package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sessioncap/sessioncap/internal/redistest"
)

// authRedis starts a Redis that refuses clients without a password: the
// default user has one, and ACL user "mx" ("mx-secret") may use only the
// keys under sessioncap:.
func authRedis(t *testing.T) *redistest.Server {
	t.Helper()
	return redistest.Standalone(t, "--requirepass", "admin-secret", "--user", "mx", "on", ">mx-secret", "~sessioncap:*", "+@all")
}

// redisConfig is a [store] on rds as user mx with the password in file. The
// store timeout is long: these tests are about authentication, and a slow
// call under -race on a busy machine must not look like an outage.
func redisConfig(rds *redistest.Server, file string) string {
	return fmt.Sprintf("[store]\nbackend = \"redis\"\ntimeout = \"2s\"\n[store.redis]\naddresses = [%q]\nusername = \"mx\"\npassword_file = %q\n", rds.Addr(), file)
}

// [store.redis] password_file: the daemon reads the file, drops the
// trailing newline and authenticates as the ACL user; connects are then
// decided through Redis: a ban made on one daemon refuses a client of
// another, and the keys are in Redis under the user's prefix.
func TestDaemonRedisPasswordFile(t *testing.T) {
	rds := authRedis(t)
	file := filepath.Join(t.TempDir(), "redis.password")
	writeFile(t, file, "mx-secret\n")
	config := redisConfig(rds, file)
	a, b := startDaemon(t, config), startDaemon(t, config)

	if out, err := exec.Command(binary, "ban", "198.51.100.7", "-for", "1h", "-reason", "test", "-admin", a.admin).CombinedOutput(); err != nil {
		t.Fatalf("ban on a: %v\n%s", err, out)
	}
	if _, act := b.connectFrom("198.51.100.7"); act.SMTPCode != 421 {
		t.Fatalf("daemon b: %v; want the ban made on a, which only Redis can tell it", act)
	}
	for _, d := range []*daemonProc{a, b} {
		if got := d.metric("sessioncap_store_up"); got != "1" {
			t.Fatalf("sessioncap_store_up %s", got)
		}
		if strings.Contains(d.logs(), "shared store") {
			t.Fatalf("the store was not up all along:\n%s", d.logs())
		}
	}
	keys, err := redistest.DoAuth(rds.Addr(), "mx", "mx-secret", "KEYS", "sessioncap:*:bans")
	if err != nil || len(strings.Fields(keys)) != 1 {
		t.Fatalf("ban sets in Redis: %q, %v; want the one of the ban", keys, err)
	}
	if bans, err := redistest.DoAuth(rds.Addr(), "mx", "mx-secret", "ZRANGE", keys, "0", "-1"); err != nil || bans != "freq:198.51.100.7/32" {
		t.Fatalf("bans in Redis: %q, %v; want freq:198.51.100.7/32", bans, err)
	}
}

// A password file that Redis refuses: the daemon still starts and serves
// (store.on_error = "local"), says why at start (Redis's WRONGPASS), reports
// sessioncap_store_up 0 and logs the outage; nothing reaches Redis.
func TestDaemonRedisWrongPassword(t *testing.T) {
	rds := authRedis(t)
	file := filepath.Join(t.TempDir(), "redis.password")
	writeFile(t, file, "not-the-secret\n")
	d := startDaemon(t, redisConfig(rds, file))
	d.waitLog(`msg="shared store not answering at start"`)
	if !strings.Contains(d.logs(), "WRONGPASS") {
		t.Fatalf("the start-up warning does not say the password was refused:\n%s", d.logs())
	}
	s, act := d.connectFrom("192.0.2.7")
	if act.StopProcessing() {
		t.Fatalf("connect with Redis refusing the password: %v; want it decided from memory", act)
	}
	s.Close()
	d.waitMetric("sessioncap_store_up", "0")
	d.waitLog(`msg="shared store down; deciding without it until it answers"`)
	if keys, err := redistest.DoAuth(rds.Addr(), "", "admin-secret", "DBSIZE"); err != nil || keys != "0" {
		t.Fatalf("DBSIZE %q, %v: something reached Redis", keys, err)
	}
}

// check-config (and the daemon at start) reports a password_file that
// cannot be read as FILE:LINE: store.redis.password_file: …, exit 78. The
// file is read only for the Redis backend, and a readable one passes.
func TestCheckConfigPasswordFile(t *testing.T) {
	dir := t.TempDir()
	config, password := filepath.Join(dir, "sessioncap.toml"), filepath.Join(dir, "redis.password")
	redis := fmt.Sprintf("[store]\nbackend = \"redis\"\n[store.redis]\naddresses = [\"127.0.0.1:6379\"]\npassword_file = %q\n", password)
	writeFile(t, config, redis)
	want := fmt.Sprintf("%s:5: store.redis.password_file: cannot read %q: no such file or directory\n", config, password)
	if code, _, errOut := runCLI("check-config", "-config", config); code != 78 || errOut != want {
		t.Fatalf("check-config: exit %d\n%s\nwant exit 78 and\n%s", code, errOut, want)
	}
	out, err := exec.Command(binary, "-config", config, "-listen", "inet:127.0.0.1:0", "-metrics-listen", "").CombinedOutput()
	if exitCode(err) != 78 || !strings.Contains(string(out), strings.TrimSuffix(want, "\n")) {
		t.Fatalf("daemon start: exit %d\n%s", exitCode(err), out)
	}

	writeFile(t, config, strings.Replace(redis, `"redis"`, `"memory"`, 1))
	if code, _, errOut := runCLI("check-config", "-config", config); code != 0 {
		t.Fatalf("memory backend with an unused password_file: exit %d\n%s", code, errOut)
	}
	writeFile(t, config, redis)
	writeFile(t, password, "secret\n")
	if code, _, errOut := runCLI("check-config", "-config", config); code != 0 {
		t.Fatalf("readable password_file: exit %d\n%s", code, errOut)
	}
}
