#!/bin/sh
# sessioncap preinstall (deb preinst / rpm %pre): create the system user and
# group before the files are unpacked, so the config file (root:sessioncap
# 0640) and /var/lib/sessioncap (sessioncap:sessioncap 0750) get their owners.
set -e

if ! getent group sessioncap >/dev/null 2>&1; then
	if [ -e /etc/debian_version ] && command -v addgroup >/dev/null 2>&1; then
		addgroup --system --quiet sessioncap
	else
		groupadd -r sessioncap
	fi
fi

if ! getent passwd sessioncap >/dev/null 2>&1; then
	nologin=/usr/sbin/nologin
	[ -x "$nologin" ] || nologin=/sbin/nologin
	if [ -e /etc/debian_version ] && command -v adduser >/dev/null 2>&1; then
		adduser --system --quiet --ingroup sessioncap --no-create-home \
			--home /var/lib/sessioncap --shell "$nologin" sessioncap
	else
		useradd -r -g sessioncap -M -d /var/lib/sessioncap -s "$nologin" \
			-c "sessioncap milter" sessioncap
	fi
fi

exit 0
