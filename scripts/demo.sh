#!/usr/bin/env bash
# `make run`: one officer's shift on simulated hardware (buffer 60 s, double-press,
# record 30 s, hold to stop, dock: the camera syncs to the dock share, verifies every
# object and frees its space), then what the back office does with the share: verify
# (pinning the device record it holds), decrypt, export.
set -euo pipefail
BIN="$1"
OUT=out/run
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== 1/4 camera on simulated hardware (accelerated clock), docked at the end"
"$BIN/bwv" sim --workdir "$OUT" --quiet 2>"$OUT/agent.log" | tee "$OUT/sim.json"
echo "== 2/4 the camera's store after docking (clips released only after the share proved them)"
"$BIN/bwv" verify "$OUT/store"
"$BIN/bwv" sync --status --store "$OUT/store" --keys "$OUT/keys"
SHARE="$OUT/dock-share/devices/$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["device_id"])' "$OUT/keys/device.json")"
echo "== 3/4 back office: verify each clip on the dock share (no secret key needed)"
for clip in "$SHARE"/clips/*/; do
  "$BIN/bwv" verify "$clip" --device-key "$OUT/keys/device.json"
done
echo "== 4/4 decrypt with the agency identity and export MP4 + report"
mkdir -p "$OUT/export"
for clip in "$SHARE"/clips/*/; do
  id=$(basename "$clip")
  "$BIN/bwv" export "$clip" --identity "$OUT/agency/agency.key" -o "$OUT/export/$id.mp4" \
    --device-key "$OUT/keys/device.json" 2>/dev/null
done
echo
echo "agent log (JSON lines): $OUT/agent.log"
for f in "$OUT"/export/*.mp4; do
  echo "MP4:    $f"
  echo "report: ${f%.mp4}.report.json"
done
