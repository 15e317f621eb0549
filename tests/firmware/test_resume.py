"""Recording survives a crash: after an unclean stop while RECORDING the agent resumes by
itself in a new clip of the same incident, linked to the interrupted one, gap stated.

A clean stop (SIGTERM → ``Agent.stop``), a deliberate end of the recording (hold, dock)
or a camera powered on in its dock does not resume.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from buffer.audit import read_events
from buffer.clip import MANIFEST_NAME
from buffer.envelope import CLIP_MAGIC, parse
from buffer.store import parse_seg_name
from buffer.verify import verify_path
from firmware.agent import RECORDING_MARK, State
from hw_sim.runner import Rig
from tests.conftest import small_config

MS = 1_000_000


def double_press(rig: Rig) -> None:
    rig.press(); rig.advance(0.12); rig.release(); rig.advance(0.18)
    rig.press(); rig.advance(0.12); rig.release()


def hold(rig: Rig, seconds: float) -> None:
    rig.press(); rig.advance(seconds); rig.release()


def crash(rig: Rig) -> None:
    """The process dies (SIGKILL, watchdog reset, power cut at a synced disk): no stop(),
    the segment being captured is lost, the kernel drops the store's lock and files."""
    store = rig.agent._store
    store.db.close()
    os.close(store._lock_fd)
    for dev in (rig.dock_sense, rig.trigger_input, rig.controls, rig.gpio):
        dev.close()
    rig._closed = True


def restart(rig: Rig, workdir: Path, after_s: float = 7.0, **kw) -> Rig:
    """Power on again ``after_s`` seconds of wall time later (the RTC kept running)."""
    utc = rig.clock.utc_ns() + int(after_s * 1e9)
    return Rig(small_config(), workdir, microphone=False, utc_start_ns=utc // 10**9 * 10**9, **kw)


def manifest(store: Path, clip_id: str) -> dict:
    return parse((store / "clips" / clip_id / MANIFEST_NAME).read_bytes(), CLIP_MAGIC).body()


def events(store: Path) -> list[dict]:
    return read_events(store / "audit.log")


def test_unclean_stop_while_recording_resumes_in_a_linked_clip(tmp_path):
    work = tmp_path / "w"
    rig = Rig(small_config(), work, microphone=False).start()
    rig.advance(4)
    double_press(rig)
    rig.advance(5.5)
    acked = {a.seq: a.hash for a in rig.result.acks if a.clip_id}
    last_acked = max(acked)
    first_clip = rig.agent._clip_id
    crash(rig)

    again = restart(rig, work).start()
    t_on = again.clock.monotonic_ns()
    # resumed at once, with the officer's start feedback: red LED, two buzzes
    assert again.agent.state is State.RECORDING
    assert again.gpio.level("red")
    again.advance(1)
    buzz = [(t, lvl) for t, lvl in again.gpio.history("haptic") if t >= t_on]
    assert [lvl for _, lvl in buzz][:4] == [True, False, True, False]
    again.advance(4)
    hold(again, 3.2)  # the officer stops it as usual
    again.advance(2)
    res = again.close()
    store = res.store_dir

    assert len(res.clip_ids) == 2 and res.clip_ids[0] == first_clip
    old, new = manifest(store, res.clip_ids[0]), manifest(store, res.clip_ids[1])
    assert old["stop_reason"] == "power_loss_recovery"
    assert set(acked) <= {s["seq"] for s in old["segments"]}  # nothing acknowledged lost
    assert new["start_reason"] == "resumed" and new["resumed_from"] == first_clip
    assert new["incident_id"] == old["incident_id"] == first_clip
    assert (new["part"], new["previous_clip"]) == (2, first_clip)
    gap = new["resume_gap"]
    assert gap["after_clip"] == first_clip and gap["after_seq"] == old["last_seq"] >= last_acked
    assert gap["before_seq"] == new["first_seq"] and gap["reason"] == "unclean_stop"
    assert gap["from_stream_id"] != gap["to_stream_id"]
    # the camera was off for 7 s of wall time plus the segment lost in RAM
    assert 7 * 10**9 <= gap["duration_ns"] <= 10 * 10**9
    assert old["resumed_from"] is None and old["resume_gap"] is None
    verdict = verify_path(store)
    assert verdict.ok, verdict.all_failures()
    starts = [e["data"] for e in events(store) if e["event"] == "record_start"]
    assert starts[-1]["resumed_from"] == first_clip
    assert starts[-1]["interrupted_last_seq"] == old["last_seq"]
    assert starts[-1]["gap_to_start_ns"] > 7 * 10**9


def test_clean_stop_while_recording_closes_the_clip_and_does_not_resume(tmp_path):
    work = tmp_path / "w"
    rig = Rig(small_config(), work, microphone=False).start()
    rig.advance(3)
    double_press(rig)
    rig.advance(3)
    rig.agent.shutdown_requested = "sigterm"  # what `bwv run` does on SIGTERM
    first = rig.close()
    assert manifest(first.store_dir, first.clip_ids[0])["stop_reason"] == "sigterm"
    again = restart(rig, work).start()
    assert again.agent.state is State.BUFFERING
    again.advance(3)
    res = again.close()
    assert len(res.clip_ids) == 1


def test_unclean_stop_after_the_officer_stopped_does_not_resume(tmp_path):
    """The hold is recognised, then the camera dies before the clip's manifest is
    written: recovery closes the clip, and recording does not come back."""
    work = tmp_path / "w"
    rig = Rig(small_config(), work, microphone=False).start()
    rig.advance(3)
    double_press(rig)
    rig.advance(3)
    hold(rig, 3.05)  # stop recognised; the segment in progress is still being captured
    assert rig.agent.state is State.BUFFERING and rig.agent._clip_id is not None
    crash(rig)
    again = restart(rig, work).start()
    assert again.agent.state is State.BUFFERING
    again.advance(2)
    res = again.close()
    assert len(res.clip_ids) == 1
    assert manifest(res.store_dir, res.clip_ids[0])["stop_reason"] == "power_loss_recovery"


def test_unclean_stop_while_buffering_does_not_start_recording(tmp_path):
    work = tmp_path / "w"
    rig = Rig(small_config(), work, microphone=False).start()
    rig.advance(3)
    double_press(rig)
    rig.advance(2)
    hold(rig, 3.2)
    rig.advance(3)  # clip closed, buffering again
    crash(rig)
    again = restart(rig, work).start()
    assert again.agent.state is State.BUFFERING
    again.close()


def test_a_stale_mark_after_a_clean_stop_is_cleared_and_never_resumes_later(tmp_path):
    """Crash while recording, a technician's tool opens and closes the store (a clean
    stop), the camera comes up buffering; a later crash while buffering must not resume
    the old recording."""
    work = tmp_path / "w"
    rig = Rig(small_config(), work, microphone=False).start()
    rig.advance(3)
    double_press(rig)
    rig.advance(3)
    crash(rig)
    r = subprocess.run([sys.executable, "-m", "firmware.cli", "recover", "--store",
                        str(work / "store"), "--keys", str(work / "keys"), "--sim-clock"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    second = restart(rig, work).start()
    assert second.agent.state is State.BUFFERING
    assert not second.agent._store.get_setting(RECORDING_MARK)
    second.advance(3)
    crash(second)
    third = restart(second, work).start()
    assert third.agent.state is State.BUFFERING
    res = third.close()
    kinds = [e["data"].get("kind") for e in events(res.store_dir) if e["event"] == "notice"]
    assert "recording_not_resumed" in kinds


def test_resumed_recording_survives_a_second_crash_and_stays_one_incident(tmp_path):
    work = tmp_path / "w"
    rig = Rig(small_config(), work, microphone=False).start()
    rig.advance(3)
    double_press(rig)
    rig.advance(3)
    crash(rig)
    second = restart(rig, work).start()
    second.advance(3)
    crash(second)
    third = restart(second, work).start()
    assert third.agent.state is State.RECORDING
    third.advance(3)
    res = third.close()
    parts = [manifest(res.store_dir, c) for c in res.clip_ids]
    assert [p["part"] for p in parts] == [1, 2, 3]
    assert len({p["incident_id"] for p in parts}) == 1
    assert [p["resumed_from"] for p in parts] == [None, parts[0]["clip_id"], parts[1]["clip_id"]]
    assert verify_path(res.store_dir).ok


def test_powered_on_in_the_dock_does_not_resume(tmp_path):
    work = tmp_path / "w"
    rig = Rig(small_config(), work, microphone=False).start()
    rig.advance(3)
    double_press(rig)
    rig.advance(3)
    crash(rig)
    again = restart(rig, work)
    again.gpio.set_input(again.dock_pin, True)  # VBUS present at power-on
    again.start()
    assert again.agent.state is not State.RECORDING
    again.advance(1)
    res = again.close()
    assert len(res.clip_ids) == 1


# --------------------------------------------------------------- a real SIGKILL
CONFIG = """
[camera]
width = 320
height = 240
bitrate = 400000
segment_seconds = 1.0
[buffer]
pre_record_seconds = 3
"""
RECORD = """
end = 600.0
[[step]]
at = 3.0
action = "double_press"
"""
IDLE = "end = 4.0\n"


def test_sigkill_of_the_running_camera_resumes_recording_at_restart(tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    (tmp_path / "rec.toml").write_text(RECORD)
    (tmp_path / "idle.toml").write_text(IDLE)
    work, ack_log = tmp_path / "work", tmp_path / "acks.jsonl"
    base = [sys.executable, "-m", "firmware.cli", "sim", "--workdir", str(work),
            "--config", str(tmp_path / "c.toml"), "--quiet", "--ack-log", str(ack_log)]
    proc = subprocess.Popen(base + ["--scenario", str(tmp_path / "rec.toml"), "--speed", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while True:
        lines = ack_log.read_text().splitlines() if ack_log.exists() else []
        if sum(1 for ln in lines if json.loads(ln)["clip_id"]) >= 4:
            break
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "4 recorded segments not acknowledged in 90 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    promised = {json.loads(ln)["seq"] for ln in ack_log.read_text().splitlines()
                if json.loads(ln)["clip_id"]}
    out = subprocess.run(base + ["--scenario", str(tmp_path / "idle.toml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    clips = json.loads(out.stdout)["clips"]
    store = work / "store"
    assert len(clips) == 2
    # (the simulator's RTC restarts from the host clock, which ran 8x slower than the
    # first run's virtual time, so order the two by their link, not by start time)
    new, old = sorted((manifest(store, c) for c in clips), key=lambda m: m["resumed_from"] is None)
    assert old["stop_reason"] == "power_loss_recovery"
    assert promised <= {s["seq"] for s in old["segments"]}
    assert new["resumed_from"] == old["clip_id"] and new["incident_id"] == old["clip_id"]
    assert new["resume_gap"]["after_seq"] == old["last_seq"]
    assert new["resume_gap"]["before_seq"] == new["first_seq"]
    assert new["stop_reason"] == "shutdown" and new["segment_count"] >= 3
    on_disk = {parse_seg_name(p.name) for p in store.rglob("*.bwvseg")}
    assert promised <= on_disk
    assert verify_path(store).ok
