#!/usr/bin/env bash
# Packaging CI for sessioncap: build the packages, judge them with lintian
# and rpmlint, install the deb, run the installed daemon as its own user,
# scrape and lint its metrics, drive milter sessions through it, upgrade it
# over a changed config, purge it (with a unit enabled while systemd is not
# PID 1), inspect the rpm, and test the Prometheus rules.
#
# Called by .ci/run as `bash packaging/ci.sh` (any working directory) on a
# fresh Debian machine as root; also fine to rerun by hand (idempotent).
# Needs the network only for apt and the Go module proxy. Every wait is
# bounded; the whole run takes about 2-4 minutes once apt is done.
# Exits non-zero with "ci.sh: FAIL: ..." on the first failed check.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

METRICS=127.0.0.1:9829
MILTER=inet:127.0.0.1:10029
# The second daemon (unix socket, low caps) listens here.
METRICS2=127.0.0.1:19829
SOCK2=/run/sessioncap/milter.sock
ADMIN2=/run/sessioncap/admin2.sock
# Daemons this script started, recorded so a rerun after a killed run can
# stop exactly those (and nothing else).
PIDFILE=/tmp/sessioncap-ci.pids

passed=0
policy=
WORK=$(mktemp -d /tmp/sessioncap-ci.XXXXXX)
chmod 0755 "$WORK"
started=()

log() { printf '\n=== %s\n' "$*"; }
ok() {
	passed=$((passed + 1))
	printf 'ok   %s\n' "$*"
}
fail() {
	printf '\nci.sh: FAIL: %s\n' "$*" >&2
	for f in "$WORK"/*.log; do
		[ -s "$f" ] || continue
		printf -- '--- %s (last 30 lines)\n' "$f" >&2
		tail -n 30 "$f" >&2
	done
	printf 'packaging: %d passed, 1 failed\n' "$passed"
	exit 1
}

stop_pid() { # pid: SIGTERM, then SIGKILL after 35 s
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 350; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
	local pid
	for pid in "${started[@]}"; do stop_pid "$pid"; done
	rm -f "$PIDFILE"
	if [ -n "$policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

remember() { # pid: record a daemon we started
	started+=("$1")
	echo "$1" >>"$PIDFILE"
}

# A previous run that was killed may have left its daemons: stop only those
# whose pid we recorded and that still run our binary.
if [ -f "$PIDFILE" ]; then
	while read -r pid; do
		exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
		case $exe in */sessioncap* | */notifysock*) stop_pid "$pid" ;; esac
	done <"$PIDFILE"
	rm -f "$PIDFILE"
fi

wait_for() { # seconds description command...: poll until command succeeds
	local secs=$1 what=$2 i
	shift 2
	for ((i = 0; i < secs * 10; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	fail "timed out after ${secs}s waiting for $what"
}

metric() { # file name{labels}: print the value of one exact series
	awk -v s="$2" '$1 == s { print $2; found = 1 } END { exit !found }' "$1"
}

scrape() { # host:port file
	curl -fsS --max-time 5 "http://$1/metrics" -o "$2" || fail "scrape of http://$1/metrics failed"
}

# ---------------------------------------------------------------------------
log "tools"
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v rpm >/dev/null || need+=(rpm)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v curl >/dev/null || need+=(curl)
command -v setpriv >/dev/null || need+=(util-linux)
command -v adduser >/dev/null || need+=(adduser)
command -v lintian >/dev/null || need+=(lintian)
command -v rpmlint >/dev/null || need+=(rpmlint)
command -v man >/dev/null || need+=(man-db)
command -v go >/dev/null || fail "no go toolchain in PATH"
if [ ${#need[@]} -gt 0 ]; then
	echo "installing: ${need[*]}"
	# Keep package postinsts from starting daemons (prometheus): the
	# standard policy-rc.d hook, only if none is there already.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		policy=1
	fi
	timeout 600 apt-get update -qq || fail "apt-get update"
	timeout 1200 apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 ||
		fail "apt-get install ${need[*]}"
	[ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
	policy=
	# Belt and braces: a prometheus server started anyway is stopped by pid.
	for pid in $(pgrep -x prometheus || true); do
		if [ "$(stat -c %U "/proc/$pid")" = prometheus ]; then
			echo "stopping the prometheus server the package started (pid $pid)"
			stop_pid "$pid"
		fi
	done
fi
go version
promtool --version 2>&1 | head -1
rpm --version
systemd-analyze --version | head -1
lintian --version
rpmlint --version

# ---------------------------------------------------------------------------
log "build"
timeout 1200 packaging/build.sh || fail "packaging/build.sh"
VERSION=$(cat dist/VERSION)
ARCH=$(dpkg --print-architecture)
case $ARCH in amd64) RPMARCH=x86_64 ;; arm64) RPMARCH=aarch64 ;; *) fail "no package for $ARCH" ;; esac
DEB=dist/sessioncap_${VERSION}_$ARCH.deb
RPM=dist/sessioncap-$VERSION-1.$RPMARCH.rpm
if ! [ -f "$DEB" ] || ! [ -f "$RPM" ]; then fail "build.sh did not make $DEB and $RPM"; fi
ok "built $DEB ($(stat -c %s "$DEB") bytes) and $RPM ($(stat -c %s "$RPM") bytes)"

# ---------------------------------------------------------------------------
log "lintian and rpmlint"
# Every finding is an error here unless an override with its reason says it
# is right for this package: the deb ships its lintian overrides
# (packaging/lintian/sessioncap); the rpm's are packaging/sessioncap.rpmlintrc
# (filters) and packaging/rpmlint.toml (settings).
# (--show-overrides would make lintian 2.116 fail on overridden tags too:
# the overrides are listed by a second run.)
lintian --fail-on error,warning --tag-display-limit 0 "$DEB" >"$WORK/lintian.log" 2>&1 ||
	fail "lintian $DEB: $(grep -v 'root privileges' "$WORK/lintian.log")"
if grep -E '^[EW]: ' "$WORK/lintian.log"; then fail "lintian warned (see above)"; fi
lintian --tag-display-limit 0 --show-overrides "$DEB" 2>/dev/null | grep '^O: ' >"$WORK/lintian-overrides.log" || true
cat "$WORK/lintian-overrides.log"
ok "lintian: no error or warning; $(wc -l <"$WORK/lintian-overrides.log") finding(s) overridden with their reasons"
# rpmlint unpacks the payload with "rpm2cpio | cpio -id" in a temporary
# directory; nfpm's rpm payload has absolute member names (/usr/bin/...,
# goreleaser/nfpm#1122), which GNU cpio would write to the real /. A cpio
# first in PATH that strips the leading "/" keeps it in the directory.
mkdir -p "$WORK/safebin"
printf '#!/bin/sh
exec /usr/bin/cpio --no-absolute-filenames "$@"
' >"$WORK/safebin/cpio"
chmod 0755 "$WORK/safebin/cpio"
rc=0
PATH=$WORK/safebin:$PATH rpmlint -c packaging/rpmlint.toml -r packaging/sessioncap.rpmlintrc "$RPM" >"$WORK/rpmlint.log" 2>&1 || rc=$?
cat "$WORK/rpmlint.log"
grep -q ' 0 errors, 0 warnings' "$WORK/rpmlint.log" || fail "rpmlint $RPM: errors or warnings without a filter (exit $rc)"
[ "$rc" = 0 ] || fail "rpmlint exited $rc"
ok "rpmlint: 0 errors, 0 warnings"
for f in /usr/bin/sessioncap /etc/sessioncap /usr/share/sessioncap; do
	if [ -e "$f" ] && ! dpkg -S "$f" >/dev/null 2>&1; then
		fail "$f exists and belongs to no package: was the rpm unpacked into /?"
	fi
done

# The unit's exposure (systemd-analyze security, lower is safer) must not
# get worse than it is: 1.5.
MAX_EXPOSURE=1.5
exposure=$(systemd-analyze security --offline=true packaging/sessioncap.service 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security printed no exposure level"
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
	fail "the unit's exposure is $exposure, worse than $MAX_EXPOSURE: keep its hardening"
ok "systemd-analyze security --offline=true: exposure $exposure (at most $MAX_EXPOSURE)"

mkdir -p "$WORK/bin"
go build -o "$WORK/bin/miltercheck" ./packaging/internal/miltercheck || fail "build miltercheck"
go build -o "$WORK/bin/notifysock" ./packaging/internal/notifysock || fail "build notifysock"

# ---------------------------------------------------------------------------
log "install the deb"
if dpkg-query -W -f='${Status}' sessioncap 2>/dev/null | grep -q 'ok installed\|config-files'; then
	echo "purging an earlier sessioncap first"
	dpkg -P sessioncap >/dev/null || fail "dpkg -P of the earlier sessioncap"
fi
dpkg -i "$DEB" || fail "dpkg -i $DEB"
ok "dpkg -i $DEB"

for f in /usr/bin/sessioncap /etc/sessioncap/sessioncap.toml /usr/lib/systemd/system/sessioncap.service \
	/usr/share/doc/sessioncap/README.md /usr/share/doc/sessioncap/copyright /usr/share/doc/sessioncap/changelog.Debian.gz \
	/usr/share/man/man8/sessioncap.8.gz /usr/share/man/man5/sessioncap.toml.5.gz /usr/share/lintian/overrides/sessioncap; do
	[ -f "$f" ] || fail "$f not installed"
done
man -w sessioncap >/dev/null 2>&1 || fail "man sessioncap finds no page"
man -w 5 sessioncap.toml >/dev/null 2>&1 || fail "man 5 sessioncap.toml finds no page"
zcat /usr/share/doc/sessioncap/changelog.Debian.gz | head -1 | grep -q "^sessioncap ($VERSION-1) " ||
	fail "changelog.Debian.gz does not start with version $VERSION-1"
[ -d /var/lib/sessioncap ] || fail "/var/lib/sessioncap not created"
ok "files in place; man sessioncap, man 5 sessioncap.toml; changelog of $VERSION-1"

grep -qx /etc/sessioncap/sessioncap.toml /var/lib/dpkg/info/sessioncap.conffiles ||
	fail "the config file is not a dpkg conffile"
if grep -q sessioncap.service /var/lib/dpkg/info/sessioncap.conffiles; then
	fail "the systemd unit must not be a conffile"
fi
ok "conffiles: $(tr '\n' ' ' </var/lib/dpkg/info/sessioncap.conffiles)"

pw=$(getent passwd sessioncap) || fail "user sessioncap not created"
case $pw in */nologin) ;; *) fail "user sessioncap has a login shell: $pw" ;; esac
getent group sessioncap >/dev/null || fail "group sessioncap not created"
[ "$(stat -c '%U:%G %a' /etc/sessioncap/sessioncap.toml)" = "root:sessioncap 640" ] ||
	fail "config file is $(stat -c '%U:%G %a' /etc/sessioncap/sessioncap.toml), want root:sessioncap 640"
[ "$(stat -c '%U:%G %a' /var/lib/sessioncap)" = "sessioncap:sessioncap 750" ] ||
	fail "/var/lib/sessioncap is $(stat -c '%U:%G %a' /var/lib/sessioncap), want sessioncap:sessioncap 750"
dpkg-statoverride --list /etc/sessioncap/sessioncap.toml >/dev/null || fail "no dpkg-statoverride for the config"
ok "user: $pw; config root:sessioncap 0640; state dir sessioncap:sessioncap 0750 (dpkg-statoverride)"

out=$(/usr/bin/sessioncap version) || fail "sessioncap version"
case $out in "sessioncap $VERSION "*) ;; *) fail "sessioncap version printed '$out', want 'sessioncap $VERSION (...)'" ;; esac
ok "$out"

systemd-analyze verify /usr/lib/systemd/system/sessioncap.service >"$WORK/verify.log" 2>&1 ||
	fail "systemd-analyze verify: $(cat "$WORK/verify.log")"
[ -s "$WORK/verify.log" ] && fail "systemd-analyze verify warned: $(cat "$WORK/verify.log")"
exposure=$(systemd-analyze security --offline=true /usr/lib/systemd/system/sessioncap.service 2>&1 | tail -1)
ok "systemd-analyze verify clean; security $exposure"

# ---------------------------------------------------------------------------
log "check-config as the sessioncap user"
as_sessioncap() {
	setpriv --reuid=sessioncap --regid=sessioncap --init-groups \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
as_sessioncap /usr/bin/sessioncap check-config -config /etc/sessioncap/sessioncap.toml >"$WORK/check-config.log" 2>&1 ||
	fail "check-config of the shipped config failed (exit $?)"
cat "$WORK/check-config.log"
ok "check-config /etc/sessioncap/sessioncap.toml exit 0"

printf 'mode = "bogus"\n[session]\nmax_messages = -1\n' >"$WORK/bad.toml"
chmod 0644 "$WORK/bad.toml"
set +e
as_sessioncap /usr/bin/sessioncap check-config -config "$WORK/bad.toml" >"$WORK/bad-config.log" 2>&1
rc=$?
set -e
[ "$rc" = 78 ] || fail "check-config of a bad file exited $rc, want 78 (EX_CONFIG)"
grep -q "bad.toml:[0-9]*:" "$WORK/bad-config.log" || fail "check-config errors lack FILE:LINE: $(cat "$WORK/bad-config.log")"
ok "check-config of a bad file: exit 78, $(wc -l <"$WORK/bad-config.log") error line(s) with FILE:LINE"

# ---------------------------------------------------------------------------
log "run the installed daemon as sessioncap (shipped config; systemd's notify protocol emulated)"
for addr in $METRICS ${MILTER#inet:} $METRICS2; do
	if curl -s --max-time 1 "http://$addr/" >/dev/null 2>&1; then
		fail "something already listens on $addr"
	fi
done
"$WORK/bin/notifysock" -socket "$WORK/notify.sock" -timeout 10m >"$WORK/notify.out" 2>"$WORK/notifysock.log" &
remember $!
wait_for 10 "the notify socket" test -S "$WORK/notify.sock"

(
	cd /var/lib/sessioncap
	umask 0007
	exec setpriv --reuid=sessioncap --regid=sessioncap --init-groups \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin NOTIFY_SOCKET="$WORK/notify.sock" STATE_DIRECTORY=/var/lib/sessioncap \
		/usr/bin/sessioncap -config /etc/sessioncap/sessioncap.toml
) 2>"$WORK/daemon.log" &
DAEMON=$!
remember $DAEMON
wait_for 15 "READY=1 from the daemon" grep -qx READY=1 "$WORK/notify.out"
grep -q 'msg=listening' "$WORK/daemon.log" || fail "no 'msg=listening' log line"
[ "$(stat -c %U "/proc/$DAEMON")" = sessioncap ] || fail "the daemon does not run as sessioncap"
ok "daemon pid $DAEMON runs as sessioncap, sent READY=1, logged: $(grep -m1 'msg=listening' "$WORK/daemon.log")"
grep -q 'state_file=/var/lib/sessioncap/state' "$WORK/daemon.log" || fail "the daemon did not log its state file (STATE_DIRECTORY=/var/lib/sessioncap)"
ok "state file logged: $(grep -m1 'state_file=' "$WORK/daemon.log")"

scrape $METRICS "$WORK/metrics.txt"
promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool-metrics.log" 2>&1 ||
	fail "promtool check metrics: $(cat "$WORK/promtool-metrics.log")"
[ -s "$WORK/promtool-metrics.log" ] && fail "promtool check metrics complained: $(cat "$WORK/promtool-metrics.log")"
ok "promtool check metrics: clean ($(grep -c '^sessioncap_' "$WORK/metrics.txt") sessioncap_ series, $(grep -c '^# TYPE sessioncap_' "$WORK/metrics.txt") families)"

grep -q "^sessioncap_build_info{.*version=\"$VERSION\"" "$WORK/metrics.txt" ||
	fail "sessioncap_build_info does not carry version $VERSION"
[ "$(metric "$WORK/metrics.txt" sessioncap_config_last_reload_successful)" = 1 ] ||
	fail "sessioncap_config_last_reload_successful is not 1"
ok "sessioncap_build_info version=$VERSION; config_last_reload_successful 1"

"$WORK/bin/miltercheck" -addr $MILTER -messages 1 >"$WORK/miltercheck.log" 2>&1 ||
	fail "milter transaction against $MILTER: $(cat "$WORK/miltercheck.log")"
cat "$WORK/miltercheck.log"
scrape $METRICS "$WORK/metrics2.txt"
for s in sessioncap_sessions_total sessioncap_messages_total; do
	v=$(metric "$WORK/metrics2.txt" $s) || fail "$s missing after the transaction"
	[ "$v" = 1 ] || fail "$s is $v after one session with one message, want 1"
done
ok "one milter session (connect/helo/mail/rcpt/data/headers/body/eom) accepted; sessions_total 1, messages_total 1, message_bytes_total $(metric "$WORK/metrics2.txt" sessioncap_message_bytes_total)"

kill -HUP $DAEMON
wait_for 10 "RELOADING=1 then READY=1 after SIGHUP" \
	sh -c "grep -x -A1 RELOADING=1 '$WORK/notify.out' | grep -qx READY=1"
kill -0 $DAEMON || fail "the daemon died on SIGHUP"
ok "SIGHUP: RELOADING=1, READY=1, still running"

# ---------------------------------------------------------------------------
log "second daemon: unix socket in /run/sessioncap, low caps, ban and unban, failed reload"
# What systemd's RuntimeDirectory=sessioncap RuntimeDirectoryMode=0750 does.
install -d -o sessioncap -g sessioncap -m 0750 /run/sessioncap
cat >"$WORK/small.toml" <<EOF
listen = "unix:$SOCK2"
[metrics]
listen = "$METRICS2"
[admin]
listen = "unix:$ADMIN2"
[session]
max_messages = 2
[frequency]
max_connections = 2
window = "1m"
ban = "5m"
# quota series exist only for configured rules; the alert rules and the
# dashboard query them (no SASL session here, so it refuses nothing)
[[rate]]
name = "user-hourly"
key = "user"
count = "messages"
limit = 200
window = "1h"
EOF
chmod 0644 "$WORK/small.toml"
(
	umask 0007
	exec setpriv --reuid=sessioncap --regid=sessioncap --init-groups \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/bin/sessioncap -config "$WORK/small.toml"
) 2>"$WORK/daemon2.log" &
DAEMON2=$!
remember $DAEMON2
wait_for 15 "the unix milter socket $SOCK2" test -S $SOCK2
perm=$(stat -c '%A %U:%G' $SOCK2)
case $perm in "srw-rw---- sessioncap:sessioncap") ;; *) fail "socket $SOCK2 is $perm, want srw-rw---- sessioncap:sessioncap" ;; esac
ok "unix socket $SOCK2: $perm"
grep -q 'level=WARN msg="no state file: bans and windows are lost on restart" state_file=auto' "$WORK/daemon2.log" ||
	fail "started without STATE_DIRECTORY, the daemon did not say it has no state file"
ok "without STATE_DIRECTORY: $(grep -m1 'no state file' "$WORK/daemon2.log")"

scrape $METRICS2 "$WORK/metrics-rules.txt"
SESSIONCAP_SCRAPE_FILE="$WORK/metrics-rules.txt" go test -count=1 \
	-run 'TestDashboardIsWellFormed|TestDashboardQueriesExposedMetrics|TestRulesQueryExposedMetrics|TestRunbookURLsPointAtReadmeSections' \
	./packaging || fail "dashboard/rules metric names do not match the installed daemon's /metrics"
ok "every metric and label the dashboard and the rules query is in the scrape of the installed daemon (with one [[rate]] rule)"

"$WORK/bin/miltercheck" -addr "unix:$SOCK2" -messages 3 -refused-from 3 -refusal 421 >"$WORK/miltercheck2.log" 2>&1 ||
	fail "third message in one session was not refused with 421: $(cat "$WORK/miltercheck2.log")"
tail -n 1 "$WORK/miltercheck2.log"
wait_for 5 "the refusal log line" grep -q 'msg=refused.*limit=session_messages.*stage=mail' "$WORK/daemon2.log"
scrape $METRICS2 "$WORK/metrics3.txt"
v=$(metric "$WORK/metrics3.txt" 'sessioncap_refusals_total{limit="session_messages",mode="enforce",stage="mail"}') ||
	fail "no sessioncap_refusals_total series for session_messages"
[ "$v" = 1 ] || fail "refusals_total{session_messages,enforce,mail} is $v, want 1"
ok "message 3 refused at MAIL with 421; refusal logged: $(grep -m1 'msg=refused' "$WORK/daemon2.log")"

# Frequency ban for another client: 2 connections pass, the 3rd is refused
# and bans the address, the 4th is refused as banned; "sessioncap unban" on
# the admin socket lifts it; the metrics listener takes no admin action.
mc() { "$WORK/bin/miltercheck" -addr "unix:$SOCK2" -client-ip 198.51.100.7 "$@" >>"$WORK/miltercheck-ban.log" 2>&1; }
mc || fail "connection 1 of 198.51.100.7 refused"
mc || fail "connection 2 of 198.51.100.7 refused"
mc -connect-refusal 421 || fail "connection 3 of 198.51.100.7 (over max_connections 2) not refused with 421"
mc -connect-refusal 421 || fail "connection 4 of 198.51.100.7 (banned) not refused with 421"
grep -q 'msg=banned.*client_ip=198.51.100.7' "$WORK/daemon2.log" || fail "no 'msg=banned' log line"
scrape $METRICS2 "$WORK/metrics4.txt"
[ "$(metric "$WORK/metrics4.txt" 'sessioncap_bans_active{mode="enforce"}')" = 1 ] || fail "sessioncap_bans_active is not 1"
perm=$(stat -c '%A %U:%G' $ADMIN2)
case $perm in "srw-rw---- sessioncap:sessioncap") ;; *) fail "admin socket $ADMIN2 is $perm, want srw-rw---- sessioncap:sessioncap" ;; esac
/usr/bin/sessioncap bans -admin "unix:$ADMIN2" >"$WORK/bans.txt" 2>&1 || fail "sessioncap bans: $(cat "$WORK/bans.txt")"
grep -q '198.51.100.7/32' "$WORK/bans.txt" || fail "sessioncap bans does not list 198.51.100.7: $(cat "$WORK/bans.txt")"
code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -X POST "http://$METRICS2/-/unban?address=198.51.100.7")
case $code in 2*) fail "POST /-/unban on the metrics listener answered $code" ;; esac
unban=$(/usr/bin/sessioncap unban 198.51.100.7 -admin "unix:$ADMIN2" 2>&1) || fail "sessioncap unban: $unban"
mc || fail "198.51.100.7 still refused after sessioncap unban ($unban)"
ok "frequency ban: 3rd connection refused 421 and banned (bans_active 1, listed by sessioncap bans); admin socket $perm; sessioncap unban said '$unban'; next connection accepted"

cp "$WORK/small.toml" "$WORK/small.toml.good"
printf 'listen = "unix:%s"\n[metrics]\nlisten = "%s"\n[session]\nmax_messages = "many"\n' "$SOCK2" "$METRICS2" >"$WORK/small.toml"
kill -HUP $DAEMON2
wait_for 10 "sessioncap_config_last_reload_successful 0" \
	sh -c "curl -fsS --max-time 2 http://$METRICS2/metrics | grep -qx 'sessioncap_config_last_reload_successful 0'"
kill -0 $DAEMON2 || fail "the daemon died on a bad reload"
"$WORK/bin/miltercheck" -addr "unix:$SOCK2" -messages 3 -refused-from 3 >"$WORK/miltercheck3.log" 2>&1 ||
	fail "after a failed reload the old config (max_messages 2) is not in force: $(cat "$WORK/miltercheck3.log")"
cp "$WORK/small.toml.good" "$WORK/small.toml"
kill -HUP $DAEMON2
wait_for 10 "sessioncap_config_last_reload_successful 1" \
	sh -c "curl -fsS --max-time 2 http://$METRICS2/metrics | grep -qx 'sessioncap_config_last_reload_successful 1'"
ok "bad reload: still running, old caps kept, reload_successful 0; good reload: 1 again"

# ---------------------------------------------------------------------------
log "stop both daemons with SIGTERM"
for pid in $DAEMON $DAEMON2; do
	kill -TERM "$pid"
	rc=0
	timeout 40 tail --pid="$pid" -f /dev/null || fail "pid $pid still running 40s after SIGTERM"
	wait "$pid" || rc=$?
	[ "$rc" = 0 ] || fail "daemon pid $pid exited $rc after SIGTERM, want 0"
done
grep -qx STOPPING=1 "$WORK/notify.out" || fail "no STOPPING=1 on the notify socket"
[ -e $SOCK2 ] && fail "the unix socket $SOCK2 was left behind"
rm -rf /run/sessioncap
ok "both exited 0; notify messages: $(tr '\n' ' ' <"$WORK/notify.out")"
[ "$(stat -c %U /var/lib/sessioncap/state 2>/dev/null)" = sessioncap ] ||
	fail "no /var/lib/sessioncap/state owned by sessioncap after SIGTERM (STATE_DIRECTORY)"
ok "state saved at shutdown: $(stat -c '%n %U:%G %a' /var/lib/sessioncap/state)"

# ---------------------------------------------------------------------------
log "upgrade over a changed conffile"
# Build the same package as version $VERSION+ciupgrade with a changed
# default config, edit the installed config, upgrade without a prompt.
sed 's#src: packaging/sessioncap.toml#src: '"$WORK"'/new.toml#' packaging/nfpm.yaml >"$WORK/nfpm.yaml"
{
	cat packaging/sessioncap.toml
	echo "# changed in the next version"
} >"$WORK/new.toml"
echo "# local edit" >>/etc/sessioncap/sessioncap.toml
NFPM=$(find dist/.tools -name 'nfpm-*' -type f | head -1)
UPDEB=$WORK/sessioncap_${VERSION}+ciupgrade_$ARCH.deb
VERSION=$VERSION+ciupgrade GOARCH=$ARCH BINARY=dist/build/linux_$ARCH/sessioncap \
	"$NFPM" package --config "$WORK/nfpm.yaml" --packager deb --target "$UPDEB" >/dev/null ||
	fail "building the upgrade package"
dpkg -i --force-confdef --force-confold "$UPDEB" </dev/null >"$WORK/upgrade.log" 2>&1 ||
	fail "dpkg -i of the upgrade: $(cat "$WORK/upgrade.log")"
grep -q '^# local edit$' /etc/sessioncap/sessioncap.toml || fail "the upgrade overwrote the edited config"
[ -f /etc/sessioncap/sessioncap.toml.dpkg-dist ] || fail "no sessioncap.toml.dpkg-dist after the upgrade"
grep -q 'changed in the next version' /etc/sessioncap/sessioncap.toml.dpkg-dist || fail ".dpkg-dist is not the new default"
[ "$(stat -c '%U:%G %a' /etc/sessioncap/sessioncap.toml)" = "root:sessioncap 640" ] ||
	fail "after the upgrade the config is $(stat -c '%U:%G %a' /etc/sessioncap/sessioncap.toml), want root:sessioncap 640"
ok "edited config kept (root:sessioncap 0640), new default in /etc/sessioncap/sessioncap.toml.dpkg-dist"

# ---------------------------------------------------------------------------
log "purge (with the unit enabled while systemd is not PID 1)"
# An admin enables the unit on a host where systemd is not running (a
# container, a chroot, this CI): systemctl makes the link offline. Purge
# must remove it, as deb-systemd-helper does whether or not systemd runs.
WANTS=/etc/systemd/system/multi-user.target.wants/sessioncap.service
if [ -d /run/systemd/system ]; then
	echo "systemd is PID 1 here: the purge runs with it"
fi
systemctl enable sessioncap.service >"$WORK/enable.log" 2>&1 || fail "systemctl enable sessioncap: $(cat "$WORK/enable.log")"
[ -L "$WANTS" ] || fail "systemctl enable made no $WANTS"
dpkg -P sessioncap >"$WORK/purge.log" 2>&1 || fail "dpkg -P sessioncap: $(cat "$WORK/purge.log")"
left=()
for f in /usr/bin/sessioncap /usr/lib/systemd/system/sessioncap.service /etc/sessioncap /var/lib/sessioncap \
	/usr/share/doc/sessioncap /usr/share/sessioncap /usr/share/man/man8/sessioncap.8.gz \
	"$WANTS" /etc/systemd/system/sessioncap.service \
	/var/lib/systemd/deb-systemd-helper-enabled/sessioncap.service.dsh-also \
	/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/sessioncap.service \
	/var/lib/systemd/deb-systemd-helper-masked/sessioncap.service; do
	if [ -e "$f" ] || [ -L "$f" ]; then left+=("$f"); fi
done
if dpkg-statoverride --list | grep -q sessioncap; then left+=("dpkg-statoverride: $(dpkg-statoverride --list | grep sessioncap | tr '\n' ' ')"); fi
[ ${#left[@]} -eq 0 ] || fail "left after purge: ${left[*]}"
if dpkg-query -W -f='${Status}' sessioncap 2>/dev/null | grep -q installed; then
	fail "dpkg still lists sessioncap after purge"
fi
getent passwd sessioncap >/dev/null || fail "purge removed the sessioncap user (policy says keep it)"
ok "purged: binary, unit, its enabled link and deb-systemd-helper state, statoverrides, /etc/sessioncap, /var/lib/sessioncap, docs gone; user sessioncap kept (Debian policy)"

# ---------------------------------------------------------------------------
log "inspect the rpm"
rpm -qpl "$RPM" >"$WORK/rpm-l.txt" || fail "rpm -qpl"
for f in /usr/bin/sessioncap /etc/sessioncap/sessioncap.toml /usr/lib/systemd/system/sessioncap.service \
	/var/lib/sessioncap /usr/share/doc/sessioncap/README.md /usr/share/licenses/sessioncap/LICENSE \
	/usr/share/man/man8/sessioncap.8.gz /usr/share/man/man5/sessioncap.toml.5.gz /usr/lib/sysusers.d/sessioncap.conf; do
	grep -qx "$f" "$WORK/rpm-l.txt" || fail "rpm lacks $f"
done
ok "rpm -qpl: $(wc -l <"$WORK/rpm-l.txt") paths"
[ "$(rpm -qpc "$RPM")" = /etc/sessioncap/sessioncap.toml ] || fail "rpm -qpc: $(rpm -qpc "$RPM")"
ok "rpm -qpc: /etc/sessioncap/sessioncap.toml only"
rpm -qp --queryformat '[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEMODES:perms}\n]' "$RPM" >"$WORK/rpm-flags.txt"
cat "$WORK/rpm-flags.txt"
grep -qx '/etc/sessioncap/sessioncap.toml cn root:sessioncap -rw-r-----' "$WORK/rpm-flags.txt" ||
	fail "config is not %config(noreplace) root:sessioncap 0640"
grep -q '^/usr/lib/systemd/system/sessioncap.service  root:root' "$WORK/rpm-flags.txt" ||
	fail "the unit must not be a %config file"
grep -qx '/var/lib/sessioncap  sessioncap:sessioncap drwxr-x---' "$WORK/rpm-flags.txt" ||
	fail "/var/lib/sessioncap is not sessioncap:sessioncap 0750 in the rpm"
ok "rpm fflags: config 'cn' (config, noreplace); unit plain; state dir sessioncap 0750"
rpm -qp --scripts "$RPM" >"$WORK/rpm-scripts.txt"
for s in preinstall postinstall preuninstall postuninstall; do
	grep -q "^$s scriptlet" "$WORK/rpm-scripts.txt" || fail "rpm has no $s scriptlet"
done
grep -q 'systemd-sysusers' "$WORK/rpm-scripts.txt" || fail "rpm %pre does not use systemd-sysusers"
grep -q 'systemd-update-helper' "$WORK/rpm-scripts.txt" || fail "rpm scriptlets do not follow %systemd_post/%systemd_preun"
rpm -qp --changelog "$RPM" | grep -q -- "- $VERSION-1\$" || fail "rpm %changelog lacks $VERSION-1: $(rpm -qp --changelog "$RPM")"
[ "$(rpm -qp --queryformat '%{ARCH} %{VERSION}' "$RPM")" = "$RPMARCH $VERSION" ] ||
	fail "rpm arch/version: $(rpm -qp --queryformat '%{ARCH} %{VERSION}' "$RPM")"
ok "rpm $RPMARCH $VERSION with %pre/%post/%preun/%postun"

# ---------------------------------------------------------------------------
log "Prometheus rules"
promtool check rules packaging/prometheus/sessioncap.rules.yml || fail "promtool check rules"
ok "promtool check rules"
(cd packaging/prometheus && promtool test rules sessioncap.rules.test.yml) || fail "promtool test rules"
ok "promtool test rules ($(grep -c '^  - name:' packaging/prometheus/sessioncap.rules.test.yml) test groups)"

printf '\npackaging: %d passed, 0 failed\n' "$passed"
