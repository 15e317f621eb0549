#!/usr/bin/env bash
# The real chronyd for tests/drivers/test_chrony_refclock.py, unpacked from Debian's chrony
# package into DIR — not installed: a test machine must not start a time daemon. The test
# runs it with -x (never touches the clock) on private sockets.
set -euo pipefail
dest=${1:?usage: fetch-chronyd.sh DIR}
mkdir -p "$dest" && dest=$(cd "$dest" && pwd)  # absolute: the work below happens in a temp dir
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! apt-get download chrony >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    apt-get download chrony >/dev/null
fi
mkdir -p "$dest"
dpkg-deb -x chrony_*.deb "$dest"
"$dest/usr/sbin/chronyd" -v
