"""Docking on hw_sim: the agent's DOCKED state, its hand-off to sync, undock and re-dock."""
from __future__ import annotations

import time

from buffer.verify import verify_clip
from firmware.agent import State
from hw_sim.runner import Rig
from sync.directory import DirectoryTarget
from tests.conftest import small_config
from tests.firmware.test_agent import double_press, hold


class SlowShare(DirectoryTarget):
    """A dock share on a slow link (real time), so an undock can land mid-transfer."""

    def __init__(self, root, delay_s: float) -> None:
        super().__init__(root)
        self.delay_s = delay_s
        self.puts = 0

    def put(self, *a, **kw):
        time.sleep(self.delay_s)
        self.puts += 1
        return super().put(*a, **kw)


def wait_for(pred, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_docking_closes_the_clip_syncs_and_shows_it(tmp_path):
    rig = Rig(small_config(), tmp_path / "w").start()
    rig.advance(4)
    double_press(rig)
    rig.advance(3.5)
    rig.dock()  # while recording: the clip ends, partial segment kept
    rig.advance(0.5)  # dock debounce (300 ms)
    assert rig.agent.state is State.DOCKED
    report = rig.sync.reports[-1]
    assert report.status == "complete" and len(report.released) == 1
    assert rig.gpio.level("green") and not rig.gpio.level("red")  # steady green: synced
    double_press(rig)  # no recording in the dock
    assert rig.agent.state is State.DOCKED
    res = rig.close()
    clip = res.clip_dir(res.clip_ids[0])
    report = verify_clip(clip, rig.keys.device())
    assert report.ok and report.manifest["stop_reason"] == "docked"
    audit = (res.store_dir / "audit.log").read_text()
    assert '"event":"dock"' in audit and '"event":"clip_released"' in audit


def test_a_dock_bounce_shorter_than_the_debounce_is_ignored(tmp_path):
    rig = Rig(small_config(), tmp_path / "w").start()
    rig.advance(2)
    rig.dock()
    rig.advance(0.1)
    rig.undock()
    rig.advance(1)
    assert rig.agent.state is State.BUFFERING and rig.sync.reports == []
    rig.close()


def test_undock_mid_transfer_then_dock_again_completes(tmp_path):
    share_root = tmp_path / "share"
    share_root.mkdir()
    share = SlowShare(share_root, delay_s=0.15)
    rig = Rig(small_config(), tmp_path / "w", threaded=True, target_factory=lambda: share).start()
    rig.advance(4)
    double_press(rig)
    rig.advance(6)
    hold(rig, 3.1)
    rig.advance(2)
    rig.dock()
    rig.advance(0.5)
    assert wait_for(lambda: share.puts >= 3)
    rig.undock()
    rig.advance(0.5)  # debounce: the sync is told to stop at its next object boundary
    assert wait_for(lambda: not (rig.sync._thread and rig.sync._thread.is_alive()))
    first = rig.sync.reports[-1]
    assert first.status == "stopped" and first.released == []
    assert rig.agent.state is State.BUFFERING
    rig.dock()
    rig.advance(0.5)
    assert wait_for(lambda: len(rig.sync.reports) == 2 and not rig.sync._thread.is_alive(), 60)
    second = rig.sync.reports[-1]
    assert second.status == "complete" and len(second.released) == 1, second.as_dict()
    res = rig.close()
    clip_id = res.clip_ids[0]
    shared = share_root / "devices" / rig.keys.device().device_id / "clips" / clip_id
    assert verify_clip(shared, rig.keys.device()).ok
    assert second.objects_already_there <= 1  # the object in flight at the undock, at most


def test_the_dock_brings_the_officer_assignment(tmp_path):
    import json as _json
    rig = Rig(small_config(), tmp_path / "w").start()
    device = rig.keys.device().device_id
    d = rig.dock_share / "devices" / device
    d.mkdir(parents=True)
    (d / "assignment.json").write_text(_json.dumps({"officer_id": "OFC-2024", "by": "roster"}))
    rig.advance(2)
    rig.dock()
    rig.advance(0.5)
    assert rig.agent.officer_id == "OFC-2024"
    rig.undock()
    rig.advance(1)
    double_press(rig)
    rig.advance(3)
    hold(rig, 3.1)
    rig.advance(2)
    res = rig.close()
    last = res.clip_ids[-1]
    assert verify_clip(res.clip_dir(last), rig.keys.device()).manifest["officer_id"] == "OFC-2024"
    audit = (res.store_dir / "audit.log").read_text()
    assert '"by":"dock: roster"' in audit
