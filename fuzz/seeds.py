"""Regenerate the committed fixtures and seed corpora from real objects.

    .venv/bin/python -m fuzz.seeds        # rewrites fuzz/fixtures and fuzz/corpus

Every seed is what the production code writes, not a hand-made imitation: a tiny clip
recorded by the real agent on hw_sim (160x120 at 4 fps, 0.5 s segments, GPS and audio
on, one event marker), its manifest, its audit log, the device record and store marker,
the default configuration written out as TOML, NMEA epochs from the simulated receiver;
console frames, firmware bundles and a TUF repository made by their own code
(``seeds()`` in those targets). Seeds stay
small (a few KB) so libFuzzer's mutations are cheap. Re-running makes a new device key,
so the fixtures and the corpora are rewritten together.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from fuzz.harness import CORPUS, FIXTURES, available, load
from fuzz.targets.config import toml_dumps

TINY = {"camera": {"width": 160, "height": 120, "fps": 4, "bitrate": 100_000,
                   "segment_seconds": 0.5},
        "buffer": {"pre_record_seconds": 0},
        "controls": {"hold_ms": 800, "double_press_ms": 450},
        "audio": {"sample_rate": 8000}}


#: The corpora this script owns (targets added later may bring their own seeds).
MINE = ("segment", "manifest", "audit", "device_record", "store_marker", "config", "nmea",
        "gps_stream", "assignment")


def _record_clip(work: Path):
    from firmware.config import validate
    from hw_sim import runner
    steps = (runner.double_press(2.0) + runner.hold(2.9, 1.0)
             + [runner.Step(2.6, "press", "function"), runner.Step(2.7, "release", "function")])
    sc = runner.Scenario(sorted(steps, key=lambda s: s.at_s), end_s=5.5, name="fuzz-seed")
    return runner.run(validate(TINY, "<fuzz seeds>"), work, sc)


def _write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def _nmea_lines() -> list[bytes]:
    from hw_sim.clock import SimClock
    from hw_sim.gps import SimGpsReceiver
    clock = SimClock()
    with SimGpsReceiver(clock, talker="GN") as rx:
        fix = rx._epoch(clock.utc_ns())
        rx.lose_fix()
        searching = rx._epoch(clock.utc_ns() + 10**9)
        other = [b"$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74",
                 b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48"]  # NMEA 0183's own examples
    return fix.splitlines(keepends=True) + searching.splitlines(keepends=True) + [g + b"\r\n" for g in other]


def main() -> None:
    from firmware.config import SCHEMA
    for d in [FIXTURES / "clips", FIXTURES / "device.json"] + [CORPUS / t for t in MINE]:
        if d.is_dir():
            shutil.rmtree(d)
        elif d.exists():
            d.unlink()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bwv-fuzz-seeds-") as tmp:
        result = _record_clip(Path(tmp))
        store = result.store_dir
        (clip_id,) = result.clip_ids
        clip = store / "clips" / clip_id
        segs = sorted(clip.glob("*.bwvseg"))
        if not 2 <= len(segs) <= 4:
            raise SystemExit(f"seed clip has {len(segs)} segments; expected 2-4 (adjust TINY)")
        # The backdrop the segment and manifest targets verify against.
        shutil.copytree(clip, FIXTURES / "clips" / clip_id)
        shutil.copy(store / "device.json", FIXTURES / "device.json")
        for p in segs[-2:]:
            _write("segment", p.name, p.read_bytes())
        _write("manifest", "manifest.bwvclip", (clip / "manifest.bwvclip").read_bytes())
        audit = (store / "audit.log").read_bytes()
        _write("audit", "audit.log", audit)
        lines = audit.splitlines(keepends=True)
        _write("audit", "first-two-records.log", b"".join(lines[:2]))
        _write("device_record", "device.json", (store / "device.json").read_bytes())
        _write("store_marker", "bwv-store.json", (store / "bwv-store.json").read_bytes())
    defaults = {s: {k: spec.default for k, spec in keys.items()} for s, keys in SCHEMA.items()}
    _write("config", "defaults.toml", toml_dumps(defaults).encode())
    _write("config", "small.toml", toml_dumps({"camera": {"width": 320, "height": 240},
                                            "buffer": {"pre_record_seconds": 3}}).encode())
    _write("config", "s3.toml", toml_dumps({"sync": {"target": "s3", "s3_bucket": "evidence",
                                                  "s3_endpoint": "https://s3.example"},
                                         "controls": {"trigger_enabled": True}}).encode())
    nmea = _nmea_lines()
    for i, line in enumerate(nmea):
        _write("nmea", f"line-{i}.nmea", line)
    _write("gps_stream", "epochs.nmea", b"".join(nmea))
    _write("assignment", "assignment.json",
           json.dumps({"officer_id": "PC 4711", "by": "back office"}).encode())
    for name in ("dock_sidecar", "console_frame", "bundle", "tuf_metadata"):  # own seeds()
        if available(name):
            if (CORPUS / name).exists():
                shutil.rmtree(CORPUS / name)
            load(name).seeds(CORPUS / name)
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"fuzz seeds: {sum(1 for p in CORPUS.rglob('*') if p.is_file())} files, "
          f"{total / 1024:.1f} KiB in {CORPUS}")


if __name__ == "__main__":
    main()
