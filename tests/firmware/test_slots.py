"""firmware.slots: A/B install, re-verification, boot counter, commit and rollback."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from firmware import slots as slots_mod
from firmware.health import check_slot_code
from firmware.slots import SlotError, Slots
from firmware.wheel import WheelError, read_wheel
from hw_sim.clock import SimClock
from tests.firmware.update_helpers import (bundles, make_bundle, make_wheel, tree_digest,  # noqa: F401
                                           wheel_files, write_wheel)


def new_slots(root: Path, **kw) -> Slots:
    return Slots(root, clock=SimClock(utc_start_ns=1_768_478_400 * 10**9), **kw)


def events(state_or_slots) -> list[str]:
    st = state_or_slots.read_state() if isinstance(state_or_slots, Slots) else state_or_slots
    return [e["event"] for e in st["pending_audit"]]


@pytest.fixture
def committed(tmp_path, bundles) -> Slots:
    """A device with 0.1.0 committed in slot a (a factory install)."""
    s = new_slots(tmp_path / "opt-bwv")
    s.install(*bundles["0.1.0"])
    return s


def test_first_install_is_committed_and_verifies(tmp_path, bundles):
    s = new_slots(tmp_path / "opt-bwv")
    assert not s.exists() and s.on_boot().action == "none"
    steps = []
    res = s.install(*bundles["0.1.0"], progress=lambda d, t: steps.append((d, t)))
    assert res == {"status": "installed", "slot": "a", "version": "0.1.0", "previous_version": None,
                   "trial": False, "restart_required": True}
    assert steps and steps[-1][0] == steps[-1][1]
    assert os.readlink(tmp_path / "opt-bwv" / "current") == "slots/a"
    st = s.read_state()
    assert st["active"] == "a" and st["trying"] is None and st["slots"]["a"]["state"] == "good"
    assert s.verify_slot("a") == []
    lib = tmp_path / "opt-bwv" / "slots" / "a" / "lib"
    assert (lib / "firmware" / "slots.py").is_file() and (lib / "bwv-0.1.0.dist-info" / "RECORD").is_file()
    assert (tmp_path / "opt-bwv" / "slots" / "a" / "config" / "default.toml").read_text().startswith("[device]")
    assert events(s) == ["update_install_started", "update_installed"]
    assert s.on_boot().action == "committed"


def test_install_into_inactive_slot_leaves_active_untouched(committed, bundles):
    a = committed.slot_dir("a")
    before = tree_digest(a)
    res = committed.install(*bundles["0.2.0"])
    assert res["slot"] == "b" and res["trial"] and res["previous_version"] == "0.1.0"
    assert tree_digest(a) == before
    assert committed.current() == "b"
    st = committed.read_state()
    assert (st["active"], st["previous"], st["trying"], st["attempts"]) == ("b", "a", "b", 0)
    assert st["slots"]["b"]["state"] == "trying" and st["slots"]["a"]["state"] == "good"
    # a trial must end before the next install (it would wipe the rollback target)
    with pytest.raises(SlotError) as e:
        committed.install(*bundles["0.3.0"])
    assert e.value.reason == "trial-in-progress"
    assert tree_digest(a) == before


def test_trial_then_commit(committed, bundles):
    committed.install(*bundles["0.2.0"])
    o = committed.on_boot()
    assert (o.action, o.slot, o.version, o.attempt) == ("trial", "b", "0.2.0", 1)
    assert committed.record_health(True).action == "committed"
    st = committed.read_state()
    assert st["trying"] is None and st["slots"]["b"]["state"] == "good"
    assert st["last_result"]["result"] == "committed"
    assert events(committed)[-2:] == ["update_trial_start", "update_committed"]
    assert committed.on_boot().action == "committed" and committed.current() == "b"
    # the next install goes into a (the old version), b keeps running
    b = tree_digest(committed.slot_dir("b"))
    assert committed.install(*bundles["0.3.0"])["slot"] == "a"
    assert tree_digest(committed.slot_dir("b")) == b


@pytest.mark.parametrize("damage", ["lib", "payload", "config", "extra"])
def test_corruption_after_writing_is_caught_and_nothing_switches(committed, bundles, monkeypatch, damage):
    real = slots_mod.write_durable

    def write_then_damage(directory, name, data, mode=0o640):
        path = real(directory, name, data, mode)
        if name == slots_mod.SLOT_RECORD:  # the slot is complete: damage it before re-verify
            d = Path(directory)
            target = {"lib": d / "lib" / "firmware" / "agent.py",
                      "payload": d / "payload" / "config" / "bwv.toml",
                      "config": d / "config" / "default.toml"}.get(damage)
            if target is None:
                (d / "lib" / "firmware" / "implant.py").write_text("import os\n")
            else:
                data = bytearray(target.read_bytes())
                data[len(data) // 2] ^= 0x01
                target.write_bytes(bytes(data))
        return path
    monkeypatch.setattr(slots_mod, "write_durable", write_then_damage)
    before = tree_digest(committed.slot_dir("a"))
    with pytest.raises(SlotError) as e:
        committed.install(*bundles["0.2.0"])
    assert e.value.reason == "verify-after-write"
    assert committed.current() == "a" and tree_digest(committed.slot_dir("a")) == before
    st = committed.read_state()
    assert (st["active"], st["trying"]) == ("a", None)
    assert st["slots"]["b"]["state"] == "failed" and st["previous"] is None
    assert st["last_result"]["result"] == "install_failed"
    assert events(committed)[-1] == "update_install_failed"
    assert committed.on_boot().action == "committed"


def test_broken_release_fails_its_health_check_three_times_and_is_rolled_back(committed, bundles):
    """The health check's slot probe imports the slot's own package: a wheel whose
    firmware.agent raises fails every start; after the third, slot a is back."""
    committed.install(*bundles["broken"])
    b = committed.slot_dir("b")
    for attempt in (1, 2, 3):
        o = committed.on_boot()
        assert (o.action, o.attempt) == ("trial", attempt)
        check = check_slot_code(b, o.version)
        assert not check.ok and "broken on purpose" in check.detail
        result = committed.record_health(False, [f"slot_code: {check.detail}"])
    assert result.action == "rolled_back" and result.slot == "a"
    assert committed.current() == "a"
    st = committed.read_state()
    assert st["slots"]["b"]["state"] == "failed" and st["trying"] is None and st["previous"] is None
    rb = [e for e in st["pending_audit"] if e["event"] == "update_rolled_back"]
    assert len(rb) == 1 and rb[0]["data"]["automatic"] and "broken on purpose" in rb[0]["data"]["reason"]
    assert events(committed).count("update_health_check_failed") == 3
    assert committed.on_boot().action == "committed"
    # the good release passes the same probe from its slot
    assert check_slot_code(committed.slot_dir("a"), "0.1.0").ok


def test_starts_that_die_before_reporting_count_too(committed, bundles):
    committed.install(*bundles["0.2.0"])
    for n in (1, 2, 3):
        assert committed.on_boot().attempt == n  # each start dies before its health check
    o = committed.on_boot()
    assert o.action == "rolled_back" and committed.current() == "a"
    assert "3 starts" in committed.read_state()["last_result"]["reason"]


def test_max_attempts_is_configurable(committed, bundles):
    s = Slots(committed.root, clock=committed.clock, max_attempts=1)
    s.install(*bundles["0.2.0"])
    s.on_boot()
    assert s.record_health(False, ["camera: no key frame"]).action == "rolled_back"


def test_manual_rollback_and_forward_again(committed, bundles):
    committed.install(*bundles["0.2.0"])
    committed.on_boot()
    committed.record_health(True)
    o = committed.rollback("technician: field report of a regression")
    assert (o.action, o.slot, o.version) == ("rolled_back", "a", "0.1.0")
    st = committed.read_state()
    assert (st["active"], st["previous"]) == ("a", "b") and st["slots"]["b"]["state"] == "good"
    assert committed.rollback("back again").slot == "b" and committed.current() == "b"


def test_rollback_refuses_a_damaged_previous_slot(committed, bundles):
    committed.install(*bundles["0.2.0"])
    committed.on_boot()
    committed.record_health(True)
    victim = committed.slot_dir("a") / "lib" / "firmware" / "agent.py"
    victim.write_bytes(victim.read_bytes() + b"\n# tampered\n")
    with pytest.raises(SlotError) as e:
        committed.rollback("technician")
    assert e.value.reason == "rollback-target-damaged" and committed.current() == "b"
    with pytest.raises(SlotError) as e:
        committed.rollback("again")
    assert e.value.reason == "no-previous-slot"


def test_a_failed_trial_with_a_damaged_previous_slot_stays_and_says_so(committed, bundles):
    committed.install(*bundles["0.2.0"])
    (committed.slot_dir("a") / "slot.json").write_text("{}")
    committed.on_boot()
    o = committed.record_health(False, ["camera: no key frame"])
    assert o.action == "trial"  # attempts left: no rollback yet
    committed.on_boot(), committed.on_boot()
    assert committed.on_boot().action == "rollback_failed"
    assert committed.current() == "b"
    assert committed.read_state()["last_result"]["result"] == "rollback_failed"


def test_a_switch_cut_between_boot_json_and_symlink_is_finished_at_boot(committed, bundles):
    committed.install(*bundles["0.2.0"])
    link = committed.root / "current"
    os.unlink(link)
    os.symlink("slots/a", link)  # the rename never reached the disk
    o = committed.on_boot()
    assert committed.current() == "b" and o.action == "trial" and o.attempt == 1
    assert "update_switch_completed" in events(committed)


def test_damaged_boot_json_is_rebuilt_from_verified_slots(committed, bundles):
    committed.boot_path.write_text("{not json")
    st = committed.read_state()
    assert st["active"] == "a" and st["slots"]["a"]["state"] == "good"
    assert st["pending_audit"][-1]["data"]["kind"] == "update_boot_state_damaged"
    assert committed.on_boot().action == "committed"
    assert json.loads(committed.boot_path.read_text())["active"] == "a"


def test_pending_audit_is_flushed_once(committed, bundles):
    got = []
    n = committed.flush_audit(lambda ev, **data: got.append((ev, data)))
    assert n == 2 and [g[0] for g in got] == ["update_install_started", "update_installed"]
    assert committed.flush_audit(lambda ev, **data: got.append(ev)) == 0
    # an audit sink that fails keeps the records for the next try
    committed.install(*bundles["0.2.0"])

    def broken(ev, **data):
        raise OSError("store gone")
    with pytest.raises(OSError):
        committed.flush_audit(broken)
    assert events(committed) == ["update_install_started", "update_installed"]


def test_status(committed, bundles):
    committed.install(*bundles["0.2.0"])
    committed.on_boot()
    st = committed.status(verify=True)
    assert st["current"] == "b" and st["trying"] == "b" and st["attempts"] == 1
    assert st["slots"]["a"]["version"] == "0.1.0" and st["slots"]["a"]["previous"]
    assert st["slots"]["b"]["verified"] and st["slots"]["b"]["trying"]
    assert st["last_result"]["result"] == "trial_start"


# ------------------------------------------------------------------------ wheels

def _bad_wheel(tmp_path, kind):
    files = wheel_files("0.2.0", packages=("firmware",))
    if kind == "record-hash":
        return write_wheel(tmp_path, "0.2.0", files,
                           record_override={"firmware/agent.py": "sha256=" + "A" * 43})
    if kind == "unlisted":
        return write_wheel(tmp_path, "0.2.0", files, unlisted={"firmware/extra.py": b"x = 1\n"})
    if kind == "traversal":
        return write_wheel(tmp_path, "0.2.0", {**files, "../evil.py": b"x = 1\n"})
    if kind == "data-dir":
        return write_wheel(tmp_path, "0.2.0", {**files, "bwv-0.2.0.data/scripts/run": b"#!/bin/sh\n"})
    if kind == "not-purelib":
        files["bwv-0.2.0.dist-info/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"
        return write_wheel(tmp_path, "0.2.0", files)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["record-hash", "unlisted", "traversal", "data-dir", "not-purelib"])
def test_bad_wheels_are_refused_and_nothing_switches(committed, tmp_path, kind):
    from tests.firmware.update_helpers import make_bundle as mb
    wheel = _bad_wheel(tmp_path / "w", kind)
    with pytest.raises(WheelError):
        read_wheel(wheel)
    bundle = mb(tmp_path / "b", "0.2.0", wheel)
    with pytest.raises(SlotError) as e:
        committed.install(*bundle)
    assert e.value.reason == "wheel" and committed.current() == "a"
    assert committed.read_state()["slots"]["b"]["state"] == "failed"
    assert not (committed.root / "evil.py").exists() and not (committed.root / "slots" / "evil.py").exists()


def test_bundle_without_a_bwv_wheel_of_its_version_is_refused(committed, tmp_path):
    wheel = make_wheel(tmp_path / "w", "0.1.9", packages=("firmware",))
    with pytest.raises(SlotError) as e:
        committed.install(*make_bundle(tmp_path / "b", "0.2.0", wheel))
    assert e.value.reason == "bundle" and committed.current() == "a"


# ------------------------------------------------------------------ power cuts

def _churn(root: Path, cycle: list) -> None:
    """The child: install, boot, commit, install, fail three starts, roll back … for ever."""
    import random as _r
    from drivers.clock import SystemClock
    s = Slots(root, clock=SystemClock())
    rnd = _r.Random(os.getpid())
    while True:
        for bundle in cycle:
            try:
                s.install(*bundle)
            except SlotError:
                pass
            for _ in range(3):
                o = s.on_boot()
                if o.action != "trial":
                    break
                if s.record_health(rnd.random() < 0.5, ["simulated failure"]).action != "trial":
                    break
            if rnd.random() < 0.2:
                try:
                    s.rollback("churn")
                except SlotError:
                    pass


def _assert_bootable(s: Slots) -> None:
    state = json.loads(s.boot_path.read_text())  # parseable, never torn
    assert state["format"] == slots_mod.FORMAT
    cur = s.current()
    assert cur in ("a", "b"), cur
    assert s.verify_slot(cur) == [], (cur, s.verify_slot(cur))


def test_sigkill_at_random_points_always_leaves_a_bootable_slot(committed, bundles):
    """Kill -9 a process that installs, boots, commits and rolls back, at 20 seeded
    random instants: ``current`` always names a complete slot that verifies, boot.json
    always parses, and the next start (``on_boot``) makes state and link agree."""
    import random
    import signal
    rnd = random.Random(20260115)
    cycle = [bundles["0.2.0"], bundles["0.3.0"], bundles["broken"]]
    for _ in range(20):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                _churn(committed.root, cycle)
            finally:
                os._exit(1)
        import time
        time.sleep(rnd.uniform(0.0, 0.2))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        _assert_bootable(committed)
        committed.on_boot()  # the next start
        _assert_bootable(committed)
        st = committed.read_state()
        assert committed.current() == st["active"]
        assert st["slots"][st["active"]]["state"] in ("good", "trying")
        if st["previous"] is not None:
            assert committed.verify_slot(st["previous"]) == []
    # and the device still updates normally afterwards
    if committed.read_state()["trying"]:
        committed.record_health(True)
    res = committed.install(*bundles["0.3.0"])
    assert committed.verify_slot(res["slot"]) == [] and committed.current() == res["slot"]


def _scripted(root: Path, bundles, cut: int) -> None:
    """The child: one fixed script that kills itself just before its ``cut``-th
    rename(2) / symlink(2)."""
    import signal
    from drivers.clock import SystemClock
    calls = [0]

    def boundary(real):
        def wrapped(*a, **kw):
            if calls[0] == cut:
                os.kill(os.getpid(), signal.SIGKILL)
            calls[0] += 1
            return real(*a, **kw)
        return wrapped
    for name in ("replace", "rename", "symlink"):
        setattr(os, name, boundary(getattr(os, name)))
    s = Slots(root, clock=SystemClock())
    s.install(*bundles["0.2.0"])
    s.on_boot()
    s.record_health(True)            # 0.2.0 committed in b
    s.install(*bundles["broken"])    # into a, on trial
    for _ in range(3):
        s.on_boot()
        s.record_health(False, ["slot_code: broken"])  # the third rolls back to b
    raise SystemExit(0)


@pytest.fixture
def fast_tmp(tmp_path):
    """A tmpfs directory when there is one: SIGKILL keeps the page cache, so the cut
    points are the same on any filesystem, and tmpfs makes each fsync free."""
    import shutil
    import tempfile
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="bwv-slots-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_sigkill_at_every_rename_boundary_leaves_a_bootable_slot(fast_tmp):
    """The deterministic complement: a cut before every rename(2) / symlink(2) the slot
    code makes in install, boot, commit, failed trials and rollback (small bundles)."""
    import shutil
    import signal
    tmp_path = fast_tmp
    small = {}
    for key, version, replace in (("0.1.0", "0.1.0", None), ("0.2.0", "0.2.0", None),
                                  ("broken", "0.3.0", {"firmware/agent.py": b"raise ImportError\n"})):
        wheel = make_wheel(tmp_path / f"w-{key}", version, packages=("firmware",), replace=replace)
        small[key] = make_bundle(tmp_path / f"b-{key}", version, wheel)
    base = new_slots(tmp_path / "base")
    base.install(*small["0.1.0"])
    cut = 0
    while True:
        root = tmp_path / f"cut{cut}"
        shutil.copytree(base.root, root, symlinks=True)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            code = 1
            try:
                _scripted(root, small, cut)
            except SystemExit:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        s = new_slots(root)
        _assert_bootable(s)
        s.on_boot()
        _assert_bootable(s)
        st = s.read_state()
        assert s.current() == st["active"] and st["slots"][st["active"]]["state"] in ("good", "trying")
        if st["previous"] is not None:
            assert s.verify_slot(st["previous"]) == []
        if not os.WIFSIGNALED(status):
            assert os.WEXITSTATUS(status) == 0  # the script ran to its end: every cut was made
            assert st["active"] == "b" and st["slots"]["a"]["state"] == "failed"
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
        shutil.rmtree(root)
        cut += 1
    assert cut >= 15  # install, boot, commit, trial and rollback all have cut points


def test_a_bundle_from_make_firmware_installs_verifies_and_imports(committed, tmp_path):
    """Interop with the real builder (pip + setuptools wheel, default config from SCHEMA)."""
    from firmware.bundle import read_manifest
    from firmware.bundle_build import make_firmware
    bundle = make_firmware(tmp_path / "fw", created_utc="2026-01-15T12:00:00Z", version="0.2.0",
                           hardware=["sim"])
    res = committed.install(bundle, read_manifest(bundle))
    assert res["slot"] == "b" and committed.verify_slot("b", from_medium=True) == []
    check = check_slot_code(committed.slot_dir("b"), "0.2.0")
    assert check.ok, check.detail
