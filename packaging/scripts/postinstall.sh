#!/bin/sh
# sessioncap postinstall (deb postinst / rpm %post).
#
# The service is not enabled or started on a fresh install: review
# /etc/sessioncap/sessioncap.toml first, then `systemctl enable --now sessioncap`
# and add the milter to the MTA. On an upgrade a running service is restarted
# so the new binary takes over.
set -e

# deb: $1 = configure (other actions: abort-upgrade, ... need nothing).
# rpm: $1 = 1 on install, >= 2 on upgrade.
case "$1" in
configure | 1 | 2 | [3-9] | [1-9][0-9]*) ;;
*) exit 0 ;;
esac

# The state directory is also created by the package and by systemd's
# StateDirectory=; make sure its owner is right when started without systemd.
if [ -d /var/lib/sessioncap ]; then
	chown sessioncap:sessioncap /var/lib/sessioncap
	chmod 0750 /var/lib/sessioncap
fi

# Only talk to systemd when it is PID 1 (not in containers, chroots, CI).
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	upgrade=
	case "$1" in
	configure) [ -n "$2" ] && upgrade=1 ;;
	1) ;;
	*) upgrade=1 ;;
	esac
	if [ -n "$upgrade" ]; then
		systemctl try-restart sessioncap.service >/dev/null 2>&1 || true
	fi
fi

exit 0
