"""`bwv bench` on the sim platform: every figure docs/HARDWARE.md names is in the JSON
with a sane type, the run happens in a throwaway store (never the configured one), and
bad input is one line on stderr. No timing is asserted (that is what the bench is for).
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from buffer.verify import verify_path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[device]
platform = "sim"
store_dir = "{store}"
keys_dir = "{keys}"
[camera]
width = 320
height = 240
bitrate = 400000
segment_seconds = 1.0
"""
#: field → type (float fields may be null only when they cannot be measured)
FIELDS = {
    "rtf_pipeline": float, "rtf_process": float, "kept_up": float,
    "overlay_ms_median": float, "overlay_ms_p99": float, "segmenter_ms_median": float,
    "seal_store_ms_median": float, "cpu_share_pct": float, "cpu_share_pct_buffering": float,
    "cpu_share_pct_recording": float, "peak_rss_mib": float, "seal_MBps": float,
    "ceiling_MBps": float, "seal_ratio": float, "seal_core_pct": float,
    "button_to_state_ms": float, "mic_start_ms": float,
    "frames": int, "segments_sealed": int, "store_backlog_max": int, "segment_bytes": int,
    "platform": str, "encoder": str, "sensor": str, "recording_started": bool, "audio": bool,
}


def bwv(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "firmware.cli", *args], capture_output=True,
                          text=True, timeout=180, cwd=cwd or ROOT)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    device = tmp / "device"
    (tmp / "bwv.toml").write_text(CONFIG.format(store=device / "store", keys=device / "keys"))
    (tmp / "scratch").mkdir()
    p = bwv("bench", "--config", str(tmp / "bwv.toml"), "--seconds", "2", "--json",
            "--tmp", str(tmp / "scratch"), "--keep")
    return tmp, device, p


def test_json_has_every_figure_with_sane_types(bench_run):
    _, _, p = bench_run
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints one object"
    res = json.loads(lines[0])
    for key, typ in FIELDS.items():
        assert key in res, key
        v = res[key]
        if typ is float:
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (key, v)
            assert math.isfinite(v) and v >= 0, (key, v)
        else:
            assert isinstance(v, typ) and not (typ is int and isinstance(v, bool)), (key, v)
    assert res["platform"] == "sim" and res["recording_started"] is True
    assert res["frames"] > 0 and res["segments_sealed"] >= 1 and res["segment_bytes"] > 0
    assert res["overlay_ms_p99"] >= res["overlay_ms_median"]
    assert (res["width"], res["height"], res["fps"], res["bitrate"]) == (320, 240, 30, 400_000)


def test_it_runs_in_a_throwaway_store_and_says_so(bench_run):
    tmp, device, p = bench_run
    assert p.returncode == 0, p.stderr
    assert not device.exists(), "the configured (device) store or keys were touched"
    m = re.search(r"throwaway keys and store in (\S+);", p.stderr)
    assert m and str(device / "store") in p.stderr and "not touched" in p.stderr
    scratch = Path(m.group(1))
    assert scratch.parent == tmp / "scratch"
    res = json.loads(p.stdout)
    assert res["store"] == str(scratch) and res["store_kept"] is True
    # what the bench recorded is real evidence-format output: it verifies
    stores = [d for d in scratch.rglob("store") if (d / "audit.log").is_file()]
    assert len(stores) == 1
    report = verify_path(stores[0])
    assert report.ok, report.all_failures()


def test_the_table_names_each_json_field(tmp_path):
    from firmware.bench_cmd import ROWS, render_table
    res = {k: 1.5 for k, *_ in ROWS} | {"platform": "pi", "board": "Raspberry Pi 5", "width": 1920,
                                         "height": 1080, "fps": 30, "bitrate": 16_000_000,
                                         "encoder": "hardware", "sensor": "imx708", "audio": True,
                                         "seconds": 20.0, "frames": 600, "segments_sealed": 10,
                                         "store_backlog_max": 0, "mic_start_ms": float("nan")}
    text = render_table(res)
    for key, *_ in ROWS:
        assert re.search(rf"\s{key}$", text, re.M), key
    assert re.search(r"n/a\s+ms\s+mic_start_ms", text)


@pytest.mark.parametrize("args, message", [
    (["--seconds", "1"], "too short"),
    (["--platform", "pi"], "platform \"pi\" requested"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    (tmp_path / "bwv.toml").write_text(CONFIG.format(store=tmp_path / "s", keys=tmp_path / "k"))
    p = bwv("bench", "--config", str(tmp_path / "bwv.toml"), "--tmp", str(tmp_path), *args)
    assert p.returncode == 2
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("bwv: error:")]
    assert len(err) == 1 and message in err[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not list(tmp_path.glob("bwv-bench-*")), "a failed bench leaves no scratch behind"
