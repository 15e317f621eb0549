"""firmware.updating: the update policy, dock updates, offline archives, the boot trial on
the real agent (hw_sim), and ``bwv update``."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from buffer.audit import read_events
from firmware import slots as slots_mod
from firmware.cli import main as bwv
from firmware.release import add_bundle, init_repo, make_archive
from firmware.slots import Slots
from firmware.updating import (Conditions, DockUpdater, UpdateRefused, install_offline_archive,
                               refusal, start_updates)
from hw_sim.runner import Rig
from sync.firmware_fetch import PINNED_ROOT_NAME, UpdateError
from tests.conftest import small_config
from tests.firmware.test_agent import double_press
from tests.firmware.update_helpers import Verified, bundles  # noqa: F401


def cfg_for(tmp_path: Path, **kw):
    # The Rig starts no console service (bwv run does): the console check is tested alone.
    over = {"console__enabled": False, "update__slots_dir": str(tmp_path / "opt-bwv"),
            "update__metadata_dir": str(tmp_path / "update" / "metadata")}
    over.update({f"update__{k}": v for k, v in kw.items()})
    return small_config(**over)


def factory(tmp_path: Path, rig: Rig, bundles) -> Slots:
    """A camera that left the factory with 0.1.0 committed in slot a."""
    s = Slots(tmp_path / "opt-bwv", clock=rig.clock)
    s.install(*bundles["0.1.0"])
    return s


def audit_events(rig_or_store) -> list[dict]:
    store = rig_or_store.result.store_dir if isinstance(rig_or_store, Rig) else rig_or_store
    return read_events(Path(store) / "audit.log")


def names(events) -> list[str]:
    return [e["event"] for e in events]


class Spy:
    """A verified-bundle source that records whether the policy let anyone ask it."""

    def __init__(self, update=None) -> None:
        self.update, self.calls = update, []

    def __call__(self, policy):
        self.calls.append(policy)
        return self.update


def docked(rig: Rig) -> None:
    rig.dock()
    rig.advance(0.5)  # the dock level is debounced (300 ms)
    assert rig.agent.state.value == "docked"


# ------------------------------------------------------------------------ policy

OK = Conditions(docked=True, recording=False, sync_complete=True, battery_percent=80.0)


@pytest.mark.parametrize("change, why", [
    ({}, None),
    ({"recording": True}, "recording"),
    ({"recording": True, "docked": False}, "recording"),
    ({"docked": False}, "not docked"),
    ({"sync_complete": False}, "sync has not finished"),
    ({"battery_percent": 49.9}, "below 50 %"),
    ({"battery_percent": None, "battery_problem": "EIO"}, "battery level unknown (EIO)"),
    ({"battery_percent": 50.0}, None),
])
def test_policy(change, why):
    got = refusal(Conditions(**{**OK.__dict__, **change}), min_battery_percent=50)
    assert (got is None) if why is None else (why in got)


def test_policy_without_dock_for_a_technician():
    c = Conditions(docked=False, recording=False, sync_complete=False, battery_percent=60.0)
    assert refusal(c, min_battery_percent=50, need_dock=False) is None
    assert "recording" in refusal(Conditions(**{**c.__dict__, "recording": True}),
                                  min_battery_percent=50, need_dock=False)


# ------------------------------------------------------------------------ dock updates

@pytest.fixture
def rig(tmp_path):
    r = Rig(cfg_for(tmp_path), tmp_path / "cam").start()
    yield r
    r.close()


def test_docked_idle_charged_camera_installs_and_asks_for_a_restart(tmp_path, rig, bundles):
    slots = factory(tmp_path, rig, bundles)
    spy = Spy(Verified(*bundles["0.2.0"]))
    up = DockUpdater(rig.agent.cfg, agent=rig.agent, clock=rig.clock, slots=slots, hardware="sim",
                     fetch=spy)
    docked(rig)
    res = up.attempt(sync_complete=True)
    assert res["status"] == "installed" and res["slot"] == "b" and res["version"] == "0.2.0"
    assert spy.calls[0].running_version == "0.1.0" and spy.calls[0].hardware == "sim"
    assert slots.current() == "b" and slots.read_state()["trying"] == "b"
    assert rig.agent.shutdown_requested == "update_restart"
    ev = audit_events(rig)
    assert names(ev)[-1] == "update_installed" and ev[-1]["data"]["version"] == "0.2.0"
    assert ev[-1]["data"]["trial"] and ev[-1]["data"]["previous_version"] == "0.1.0"
    assert names(ev).index("update_verified") < len(ev) - 1
    assert slots.read_state()["pending_audit"] == []  # the factory install's records too


@pytest.mark.parametrize("case", ["recording", "undocked", "low_battery", "sync_unfinished",
                                  "gauge_unreadable"])
def test_no_install_unless_docked_idle_synced_and_charged(tmp_path, rig, bundles, case):
    slots = factory(tmp_path, rig, bundles)
    before = slots.read_state()
    spy = Spy(Verified(*bundles["0.2.0"]))
    up = DockUpdater(rig.agent.cfg, agent=rig.agent, clock=rig.clock, slots=slots, hardware="sim",
                     fetch=spy)
    complete = True
    if case == "recording":
        double_press(rig)
        rig.advance(1.0)
        assert rig.agent.state.value == "recording"
    elif case == "low_battery":
        docked(rig)
        rig.battery.set_percent(35.0)
    elif case == "gauge_unreadable":
        docked(rig)
        rig.battery.fault = "unreadable"
    elif case == "sync_unfinished":
        docked(rig)
        complete = False
    res = up.attempt(sync_complete=complete)
    assert res["status"] == "deferred", res
    assert spy.calls == []  # nothing was even fetched
    assert slots.read_state()["slots"] == before["slots"] and slots.current() == "a"
    assert rig.agent.shutdown_requested is None


def test_battery_giving_out_mid_install_aborts_and_nothing_switches(tmp_path, rig, bundles, monkeypatch):
    slots = factory(tmp_path, rig, bundles)
    up = DockUpdater(rig.agent.cfg, agent=rig.agent, clock=rig.clock, slots=slots, hardware="sim",
                     fetch=Spy(Verified(*bundles["0.2.0"])))
    docked(rig)
    real = slots_mod.extract_payload

    def extract_then_drain(bundle, dest):
        m = real(bundle, dest)
        rig.battery.set_percent(20.0)
        return m
    monkeypatch.setattr(slots_mod, "extract_payload", extract_then_drain)
    res = up.attempt(sync_complete=True)
    assert res["status"] == "failed" and res["reason"] == "aborted"
    assert slots.current() == "a" and slots.read_state()["slots"]["b"]["state"] == "installing"
    assert rig.agent.shutdown_requested is None
    assert names(audit_events(rig))[-1] == "update_install_failed"


def test_incompatible_or_older_bundles_are_rejected_and_audited(tmp_path, rig, bundles):
    """Defence in depth behind TUF's policy: the installer checks compatibility again."""
    slots = factory(tmp_path, rig, bundles)
    docked(rig)
    for hardware, fetched, reason in (("pi-5", bundles["0.2.0"], "other-hardware"),
                                      ("sim", bundles["0.1.0"], "not-newer")):
        up = DockUpdater(rig.agent.cfg, agent=rig.agent, clock=rig.clock, slots=slots,
                         hardware=hardware, fetch=Spy(Verified(*fetched)))
        res = up.attempt(sync_complete=True)
        assert (res["status"], res["reason"]) == ("failed", reason)
        last = audit_events(rig)[-1]
        assert last["event"] == "update_rejected" and last["data"]["reason"] == reason
    assert slots.current() == "a" and slots.read_state()["slots"]["b"]["state"] == "empty"
    assert rig.agent.shutdown_requested is None


# ------------------------------------------------------------------------ TUF end to end

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, bundles):
    """A release repository (bwv release) with 0.2.0 published, and its offline archive."""
    d = tmp_path_factory.mktemp("release")
    init = init_repo(d / "repo", d / "keys", now=NOW)
    add_bundle(d / "repo", d / "keys", bundles["0.2.0"][0], now=NOW)
    archive = d / "bwv-update.tar"
    make_archive(d / "repo", archive, now=NOW)
    other = init_repo(d / "other-repo", d / "other-keys", now=NOW)
    add_bundle(d / "other-repo", d / "other-keys", bundles["0.2.0"][0], now=NOW)
    forged = d / "forged.tar"
    make_archive(d / "other-repo", forged, now=NOW)
    return {"dir": d / "repo", "root": init.root, "archive": archive, "forged": forged,
            "other_root": other.root}


def pin_root(rig: Rig, root: Path) -> None:
    shutil.copy(root, rig.keys.directory / PINNED_ROOT_NAME)


def test_dock_sync_then_signed_update_from_the_dock_share(tmp_path, bundles, repo):
    """The whole path: dock → evidence sync → TUF fetch from the dock share → install."""
    cfg = cfg_for(tmp_path, source=str(repo["dir"]))
    rig = Rig(cfg, tmp_path / "cam")
    try:
        pin_root(rig, repo["root"])
        slots = factory(tmp_path, rig, bundles)
        trial = start_updates(cfg, agent=rig.agent, clock=rig.clock, sync=rig.sync, threaded=False)
        rig.start()
        double_press(rig)
        rig.advance(3.0)
        rig.dock()
        rig.advance(0.5)
        assert rig.sync.reports[-1].status == "complete"
        res = trial.updater.results[-1]
        assert res["status"] == "installed" and res["version"] == "0.2.0", res
        assert res["target"] == "bwv-firmware-0.2.0.tar"
        assert slots.current() == "b" and rig.agent.shutdown_requested == "update_restart"
        ev = audit_events(rig)
        i = names(ev).index("update_verified")
        assert ev[i]["data"]["metadata_versions"]["root"] == 1
        assert names(ev).index("dock") < i  # after the evidence went out
    finally:
        rig.close()


def test_offline_archive_installs_and_a_forged_one_is_rejected(tmp_path, rig, bundles, repo):
    pin_root(rig, repo["root"])
    slots = factory(tmp_path, rig, bundles)
    with pytest.raises(UpdateError) as e:
        install_offline_archive(repo["forged"], cfg=rig.agent.cfg, agent=rig.agent)
    assert e.value.reason == "bad-signature"
    assert slots.current() == "a" and slots.read_state()["slots"]["b"]["state"] == "empty"
    last = audit_events(rig)[-1]
    assert last["event"] == "update_rejected" and last["data"]["reason"] == "bad-signature"
    steps = []
    res = install_offline_archive(repo["archive"], cfg=rig.agent.cfg, agent=rig.agent,
                                  progress=lambda d, t: steps.append(d / t))
    assert res["status"] == "installed" and res["slot"] == "b" and res["trial"]
    assert steps[-1] == 1.0 and slots.current() == "b"


def test_offline_archive_is_refused_while_recording(tmp_path, rig, bundles, repo):
    pin_root(rig, repo["root"])
    slots = factory(tmp_path, rig, bundles)
    double_press(rig)
    rig.advance(0.5)
    with pytest.raises(UpdateRefused, match="recording"):
        install_offline_archive(repo["archive"], cfg=rig.agent.cfg, agent=rig.agent)
    assert slots.current() == "a" and names(audit_events(rig))[-1] == "update_refused"


# ------------------------------------------------------------------------ the boot trial

def start(tmp_path: Path, cfg, seconds: float = 1.5):
    """One start of the agent on simulated hardware, as ``bwv run`` does it."""
    rig = Rig(cfg, tmp_path / "cam")
    trial = start_updates(cfg, agent=rig.agent, clock=rig.clock, sync=rig.sync, threaded=False)
    rig.start()
    rig.advance(seconds)
    trial.poll(rig.agent)
    trial.wait(120)
    return rig, trial


def test_a_good_slot_is_committed_by_the_agents_health_check(tmp_path, bundles):
    cfg = cfg_for(tmp_path)
    s = Slots(tmp_path / "opt-bwv", clock=small_clock())
    s.install(*bundles["0.1.0"])
    s.install(*bundles["0.2.0"])
    rig, trial = start(tmp_path, cfg)
    try:
        assert trial.outcome.action == "trial" and trial.outcome.attempt == 1
        assert trial.report.ok, trial.report.problems
        assert {c.name for c in trial.report.checks} == {"camera", "store", "keys", "clock", "slot_code"}
        assert trial.result.action == "committed"
        assert rig.agent.shutdown_requested is None  # a committed slot just keeps running
    finally:
        rig.close()
    st = s.read_state()
    assert st["trying"] is None and st["slots"]["b"]["state"] == "good"
    ev = names(audit_events(rig))
    for e in ("update_installed", "update_trial_start", "update_committed"):
        assert e in ev
    assert ev.index("update_trial_start") < ev.index("update_committed")


def test_a_broken_bundle_fails_three_agent_starts_and_is_rolled_back(tmp_path, bundles):
    cfg = cfg_for(tmp_path)
    s = Slots(tmp_path / "opt-bwv", clock=small_clock())
    s.install(*bundles["0.1.0"])
    s.install(*bundles["broken"])
    for attempt in (1, 2, 3):
        rig, trial = start(tmp_path, cfg, seconds=1.0)
        rig.close()
        assert trial.outcome.attempt == attempt
        assert not trial.report.ok
        assert [p for p in trial.report.problems if p.startswith("slot_code")], trial.report.problems
        assert rig.agent.shutdown_requested == "update_restart"  # try again / run the old slot
    assert trial.result.action == "rolled_back" and s.current() == "a"
    rig, trial = start(tmp_path, cfg, seconds=0.5)  # the fourth start runs 0.1.0, committed
    rig.close()
    assert trial.outcome.action == "committed" and trial.outcome.version == "0.1.0"
    ev = audit_events(rig)
    assert names(ev).count("update_health_check_failed") == 3
    rb = [e for e in ev if e["event"] == "update_rolled_back"]
    assert len(rb) == 1 and rb[0]["data"]["from_version"] == "0.2.0" and rb[0]["data"]["automatic"]
    assert "broken on purpose" in rb[0]["data"]["reason"]


def small_clock():
    from hw_sim.clock import SimClock
    return SimClock()


# ------------------------------------------------------------------------ bwv update

def test_cli_status_install_rollback(tmp_path, bundles, repo, capsys):
    cfg = cfg_for(tmp_path)
    rig = Rig(cfg, tmp_path / "cam")
    pin_root(rig, repo["root"])
    factory(tmp_path, rig, bundles)
    rig.start()
    rig.advance(0.5)
    rig.close()  # the agent is stopped: the CLI can audit into the store
    common = ["--slots-dir", str(tmp_path / "opt-bwv"), "--platform", "sim",
              "--store", str(rig.result.store_dir), "--keys", str(rig.keys.directory)]
    cfgfile = tmp_path / "bwv.toml"
    cfgfile.write_text(f'[update]\nmetadata_dir = "{tmp_path / "update" / "metadata"}"\n')
    common += ["--config", str(cfgfile)]
    assert bwv(["update", "--status", *common]) == 0
    out = capsys.readouterr().out
    assert "current -> slots/a" in out and "0.1.0" in out and "installed_committed" in out

    assert bwv(["update", "--install", str(repo["archive"]), *common]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out.splitlines()[-1])["slot"] == "b"
    assert "installing (steps)" in cap.err and "on trial from the next start" in cap.err

    assert bwv(["update", "--status", "--json", "--verify", *common]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["trying"] == "b" and st["slots"]["b"]["verified"] and st["slots"]["a"]["previous"]

    assert bwv(["update", "--rollback", "--reason", "bench test", *common]) == 0
    capsys.readouterr()
    assert bwv(["update", "--status", *common]) == 0
    out = capsys.readouterr().out
    assert "current -> slots/a" in out and "rolled_back" in out and "bench test" in out
    ev = [e for e in names(audit_events(rig)) if e.startswith("update_")]
    assert ev[-1] == "update_rolled_back" and "update_installed" in ev and "update_verified" in ev

    # a bare bundle carries no signature: refused in one line
    assert bwv(["update", "--install", str(bundles["0.3.0"][0]), *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no signature" in err
    # nothing to roll back to any more (b failed its trial when it was rolled back)
    assert bwv(["update", "--rollback", *common]) == 2
    assert "no intact previous slot" in capsys.readouterr().err
    # a release repository (a dock share, a mounted USB stick) works the same way
    assert bwv(["update", "--install", str(repo["dir"]), *common]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["version"] == "0.2.0"
    assert Slots(tmp_path / "opt-bwv", clock=rig.clock).read_state()["trying"] == "b"


def test_console_check_only_when_enabled(tmp_path):
    from firmware.health import check_console
    assert check_console(small_config(console__enabled=False)) is None
    cfg = small_config(console__enabled=True, console__port=str(tmp_path / "ttyGS0"))
    c = check_console(cfg)
    assert not c.ok and "missing" in c.detail
    (tmp_path / "pty").touch()
    assert check_console(cfg, str(tmp_path / "pty")).ok  # the port the service opened


def test_bwv_run_counts_the_start_checks_and_commits_or_restarts(tmp_path, bundles):
    """firmware.main wiring: the service's own ticker runs the boot trial."""
    from firmware.main import EXIT_OK, EXIT_RESTART, run
    cfg = cfg_for(tmp_path, health_timeout_seconds=30).with_overrides(gps__enabled=False)
    s = Slots(tmp_path / "opt-bwv", clock=small_clock())
    s.install(*bundles["0.1.0"])
    s.install(*bundles["broken"])
    assert run(cfg, platform="sim", workdir=tmp_path / "run", max_seconds=20) == EXIT_RESTART
    st = s.read_state()
    assert (st["attempts"], st["last_result"]["result"]) == (1, "health_check_failed")
    s.rollback("test")  # a technician ends that trial; a good release goes on trial
    s.install(*bundles["0.3.0"])
    assert run(cfg, platform="sim", workdir=tmp_path / "run", max_seconds=3) == EXIT_OK
    st = s.read_state()
    assert st["slots"]["b"] == {**st["slots"]["b"], "state": "good", "version": "0.3.0"}
    assert st["trying"] is None and s.current() == "b"


def test_clock_and_watchdog_checks():
    from types import SimpleNamespace

    from drivers.clock import ClockState
    from firmware.health import check_clock, check_watchdog
    from firmware.watchdog import Watchdog
    clock = SimpleNamespace(state=lambda: ClockState(synced=False, source="none"))
    assert not check_clock(SimpleNamespace(clock=clock)).ok
    assert check_watchdog(None) is None
    t = [0.0]
    wd = Watchdog(loops=("capture",), clock=lambda: t[0], staleness_s={"capture": 5.0}, env={})
    wd.progress("capture")
    assert check_watchdog(wd).ok
    t[0] = 60.0
    c = check_watchdog(wd)
    assert not c.ok and "capture" in c.detail
