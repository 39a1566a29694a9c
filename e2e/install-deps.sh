#!/bin/sh
# install-deps.sh installs what the e2e suite needs on Debian 12, as root:
# a Postfix that is installed but not configured or started, m4 and the
# libraries Sendmail links against, and Sendmail itself extracted (not
# installed: it conflicts with Postfix) into $SESSIONCAP_SENDMAIL_ROOT.
# Running it again is cheap and changes nothing.
set -eu

SENDMAIL_ROOT=${SESSIONCAP_SENDMAIL_ROOT:-/opt/sessioncap-e2e/sendmail}

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps.sh: must run as root" >&2
	exit 1
fi

need=""
[ -x /usr/sbin/postfix ] || need="$need postfix"
command -v m4 >/dev/null 2>&1 || need="$need m4"
# Sendmail runs in its own mount and UTS namespace.
command -v unshare >/dev/null 2>&1 || need="$need util-linux"
command -v mount >/dev/null 2>&1 || need="$need mount"
command -v hostname >/dev/null 2>&1 || need="$need hostname"
# Sendmail's AUTH in the SASL tests: Cyrus SASL's PLAIN and LOGIN, a
# sasldb, and saslpasswd2 to write it.
for pkg in libwrap0 liblockfile1 libsasl2-modules libsasl2-modules-db sasl2-bin; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need="$need $pkg"
done

if [ -n "$need" ] || [ ! -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
fi

if [ -n "$need" ]; then
	# "No configuration": no /etc/postfix/main.cf, no service started.
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	# shellcheck disable=SC2086 # word splitting of the package list is intended
	apt-get install -y -q --no-install-recommends $need
fi

if [ ! -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ]; then
	tmp=$(mktemp -d)
	# apt-get download writes as _apt when it can.
	chown _apt "$tmp" 2>/dev/null || true
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download sendmail-bin sendmail-cf sendmail-base)
	rm -rf "$SENDMAIL_ROOT.new"
	mkdir -p "$SENDMAIL_ROOT.new"
	for deb in "$tmp"/*.deb; do
		dpkg -x "$deb" "$SENDMAIL_ROOT.new"
	done
	rm -rf "$SENDMAIL_ROOT"
	mv "$SENDMAIL_ROOT.new" "$SENDMAIL_ROOT"
fi

echo "install-deps.sh: postfix $(postconf -d -h mail_version 2>/dev/null || echo '?'), sendmail in $SENDMAIL_ROOT"
