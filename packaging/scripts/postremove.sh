#!/bin/sh
# sessioncap postremove (deb postrm / rpm %postun).
#
# Following Debian policy the sessioncap user and group are kept, even on
# purge: files it owned (logs, copies of state) may still exist, and a reused
# uid would silently give them to another account. Remove them by hand with
# `deluser --system sessioncap` (or `userdel sessioncap`) if you want.
set -e

case "$1" in
purge)
	# deb purge: dpkg has removed the conffile; remove the state too.
	rm -rf /var/lib/sessioncap
	rmdir /etc/sessioncap 2>/dev/null || true
	;;
esac

case "$1" in
remove | purge | 0)
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || true
	fi
	;;
esac

exit 0
