#!/usr/bin/env bash
# Debian packages bwv needs outside Python: ffmpeg (ffprobe validates video), age
# (the reference decrypter for interop tests) and fuse3 (the power-loss filesystem). Installed only when missing.
set -euo pipefail
need=()
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
command -v age >/dev/null 2>&1 || need+=(age)
# fuse3: the power-loss filesystem of the reliability harness (libfuse3 + fusermount3).
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3 ' || need+=(libfuse3-3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
