"""A whole 10-hour shift on hw_sim, accelerated: the incidents an officer meets, then the
dock. Every clip verifies and exports from the dock share; markers, GPS and the officer
assignment are in the manifests and reports; the audit log verifies and tells the same
story, in order.

Picture size and frame rate are small (160x120 at 1 fps, 10 s segments, 8 kHz audio) so
ten hours run in about a minute; everything else is the production path.
"""
from __future__ import annotations

import json

import pytest

from buffer.export import export_clip
from buffer.verify import verify_clip, verify_path
from firmware.agent import State
from firmware.config import validate
from hw_sim.runner import Rig

H = 3600.0
CFG = {
    "camera": {"width": 160, "height": 120, "fps": 1, "segment_seconds": 10.0, "bitrate": 100_000},
    "buffer": {"pre_record_seconds": 30},
    "audio": {"sample_rate": 8000},
    "controls": {"trigger_enabled": True},
}


def tap(rig: Rig, button: str) -> None:
    rig.press(button)
    rig.advance(0.1)
    rig.release(button)


def double(rig: Rig, button: str = "record") -> None:
    tap(rig, button)
    rig.advance(0.2)
    tap(rig, button)


def hold(rig: Rig, button: str, seconds: float = 3.2) -> None:
    rig.press(button)
    rig.advance(seconds)
    rig.release(button)


def until(rig: Rig, t0: float, at_h: float) -> None:
    rig.advance_to_ns(int(t0 + at_h * H * 1e9))


@pytest.fixture(scope="module")
def shift(tmp_path_factory):
    work = tmp_path_factory.mktemp("full-shift")
    rig = Rig(validate(CFG), work, gps=True, tick_ns=200_000_000).start()
    t0 = rig.clock.monotonic_ns()
    rig.agent.assign("OFC-1234", by="sergeant at briefing")
    story = []
    until(rig, t0, 0.5)                                   # 1. a stop-and-search
    double(rig)
    story.append("record_start")
    until(rig, t0, 0.5 + 5 / 60)
    tap(rig, "function")                                  # marker
    until(rig, t0, 0.5 + 7 / 60)
    double(rig, "function")                               # mute (latched) for a minute
    until(rig, t0, 0.5 + 8 / 60)
    double(rig, "function")
    until(rig, t0, 0.5 + 10 / 60)
    hold(rig, "record")
    until(rig, t0, 1.0)                                   # 2. plain clothes: stealth
    hold(rig, "function")
    until(rig, t0, 1 + 10 / 60)
    rig.trigger(True)                                     # holster draw starts recording
    rig.advance(1)
    rig.trigger(False)
    assert rig.agent.state is State.RECORDING
    until(rig, t0, 1 + 15 / 60)
    hold(rig, "record")
    until(rig, t0, 1 + 20 / 60)
    hold(rig, "function")                                 # stealth off
    until(rig, t0, 2.0)                                   # 3. into a tunnel: no fix
    rig.gps_sim.lose_fix(True)
    until(rig, t0, 2 + 10 / 60)
    rig.gps_sim.lose_fix(False)
    until(rig, t0, 3.0)                                   # 4. a long incident: 4 h split
    double(rig)
    until(rig, t0, 7 + 10 / 60)
    hold(rig, "record")
    rig.battery.set_percent(40.0)                         # a spare battery was swapped in
    until(rig, t0, 9.5)                                   # 5. a last incident, marked
    double(rig)
    until(rig, t0, 9.5 + 2 / 60)
    tap(rig, "function")
    until(rig, t0, 9.5 + 5 / 60)
    hold(rig, "record")
    until(rig, t0, 9.75)                                  # 6. battery getting low
    rig.battery.set_percent(9.0)
    until(rig, t0, 10.0)                                  # 7. back at the station
    rig.dock()
    rig.advance(30)
    res = rig.close()
    return rig, res


def events(res) -> list[dict]:
    return [json.loads(line.rsplit("\t", 1)[0]) for line in
            (res.store_dir / "audit.log").read_text().splitlines()]


def test_every_clip_was_synced_verifies_and_exports(shift, tmp_path):
    rig, res = shift
    assert len(res.clip_ids) == 5  # 1, 2 (trigger), 3 part 1, 3 part 2, 4
    assert rig.sync.reports[-1].status == "complete"
    assert sorted(rig.sync.reports[-1].released) == sorted(res.clip_ids)
    assert not any((res.store_dir / "clips").iterdir())  # the camera is empty, proven
    device = rig.keys.device()
    for cid in res.clip_ids:
        clip = res.clip_dir(cid)
        assert res.dock_share in clip.parents
        report = verify_clip(clip, device)
        assert report.ok, report.all_failures()
        out = export_clip(clip, res.identity, tmp_path / f"{cid}.mp4", device=device)
        assert out.report["officer_id"] == "OFC-1234"
        assert out.report["frames_checked_against_signatures"] == out.report["frame_count"]
    assert verify_path(res.store_dir).ok  # ring, audit log, and every release accounted for


def test_manifests_carry_markers_incidents_gps_and_the_officer(shift):
    rig, res = shift
    device = rig.keys.device()
    m = [verify_clip(res.clip_dir(c), device).manifest for c in res.clip_ids]
    assert [len(x["markers"]) for x in m] == [1, 0, 0, 0, 1]
    assert m[0]["markers"][0]["gps"] is not None  # the marker knows where it was made
    assert m[1]["start_reason"] == "trigger"
    assert m[2]["incident_id"] == m[3]["incident_id"] and [m[2]["part"], m[3]["part"]] == [1, 2]
    assert m[3]["first_seq"] == m[2]["last_seq"] + 1
    assert all(x["officer_id"] == "OFC-1234" for x in m)
    report = verify_clip(res.clip_dir(res.clip_ids[0]), device)
    fixes = [s.header["gps"] for s in report.segments]
    assert any(f and abs(f["lat"]) > 0 for f in fixes)
    audio = [s.header.get("audio") for s in report.segments]
    assert any(audio) and not all(audio)  # audio while recording, none while muted


def test_the_audit_log_tells_the_same_story(shift):
    rig, res = shift
    ev = events(res)
    names = [e["event"] for e in ev]
    order = ["power_on", "assignment", "record_start", "marker", "mute", "mute", "record_stop",
             "stealth", "record_start", "record_stop", "stealth", "gps_fix", "gps_fix",
             "record_start", "record_stop", "record_start", "record_stop",
             "record_start", "marker", "record_stop", "alarm", "dock", "clip_released",
             "power_off"]
    it = iter(names)
    missing = [want for want in order if not any(n == want for n in it)]
    assert not missing, f"story out of order, missing {missing} in {names}"
    starts = [e["data"]["reason"] for e in ev if e["event"] == "record_start"]
    assert starts == ["record_button", "trigger", "record_button", "split", "record_button"]
    assert any(e["event"] == "alarm" and e["data"].get("kind") == "battery_low" for e in ev)
    assert [e["data"]["acquired"] for e in ev if e["event"] == "gps_fix"][:3] == [True, False, True]
    assert sum(1 for e in ev if e["event"] == "position") > 100
    assert sum(1 for e in ev if e["event"] == "clip_released") == 5
