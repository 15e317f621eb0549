#!/usr/bin/env bash
# `make run`: one officer's shift on simulated hardware (buffer 60 s, double-press,
# record 30 s, hold to stop), then what the back office does: verify, decrypt, export.
set -euo pipefail
BIN="$1"
OUT=out/run
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== 1/3 camera on simulated hardware (accelerated clock)"
"$BIN/bwv" sim --workdir "$OUT" --quiet 2>"$OUT/agent.log" | tee "$OUT/sim.json"
echo "== 2/3 verify the store (no secret key needed)"
"$BIN/bwv" verify "$OUT/store"
echo "== 3/3 decrypt with the agency identity and export MP4 + report"
mkdir -p "$OUT/export"
for clip in "$OUT"/store/clips/*/; do
  id=$(basename "$clip")
  "$BIN/bwv" export "$clip" --identity "$OUT/agency/agency.key" -o "$OUT/export/$id.mp4" 2>/dev/null
done
echo
echo "agent log (JSON lines): $OUT/agent.log"
for f in "$OUT"/export/*.mp4; do
  echo "MP4:    $f"
  echo "report: ${f%.mp4}.report.json"
done
