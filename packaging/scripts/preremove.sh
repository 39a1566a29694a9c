#!/bin/sh
# sessioncap preremove (deb prerm / rpm %preun): stop and disable the service
# when the package goes away; leave it running across an upgrade (postinstall
# restarts it).
set -e

# deb: $1 = remove | upgrade | deconfigure | failed-upgrade.
# rpm: $1 = 0 on erase, >= 1 on upgrade.
case "$1" in
remove | deconfigure | 0) ;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	systemctl --no-reload disable sessioncap.service >/dev/null 2>&1 || true
	systemctl stop sessioncap.service >/dev/null 2>&1 || true
fi

exit 0
