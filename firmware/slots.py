"""A/B update slots: install into the inactive slot, try it, commit it or roll back.

Layout under ``update.slots_dir`` (``/opt/bwv`` on a device)::

    slots/a/                 one complete firmware version
        payload/…            the bundle's payload files, as signed (wheel, default config)
        lib/…                the wheel unpacked: PYTHONPATH for the agent
        config/default.toml  the bundle's default configuration
        slot.json            what was installed (the bundle manifest, the wheels)
    slots/b/                 the other one
    current -> slots/a       the slot that runs; switched by rename(2) of a new symlink
    boot.json                the boot state: active, previous, trying, attempts, results

Why it is safe to cut the power anywhere (tested with SIGKILL at random points):

* ``current`` only ever names a slot that was completely written, fsynced and verified
  again from the medium. The inactive slot is marked ``installing`` in ``boot.json``
  *before* it is wiped, so a half-written slot is never a rollback target.
* ``boot.json`` is replaced atomically (temp file, fsync, rename, directory fsync) and is
  the *intent*: it is written before ``current`` is switched, and every start first
  makes ``current`` agree with it (finishing a switch a power cut interrupted).
* A new slot is on trial: each start counts an attempt (``on_boot``); the agent's health
  check commits it; a failed check, or ``max_attempts`` starts without a pass, switches
  back to the previous slot, which was never touched, and is re-verified first.
* Audit records that cannot be written yet (the store is not open before the agent
  starts, or is locked by a running agent) wait in ``boot.json``'s ``pending_audit``
  and are appended by the next process that has the store (at least once, never lost).

This maps onto partitions: ``docs/HARDWARE.md`` (the Pi's tryboot, RAUC).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from buffer.fsutil import fsync_dir, write_durable
from drivers.clock import Clock, iso_utc
from firmware.bundle import (BundleError, BundleManifest, compare_versions, extract_payload,
                             manifest_from_dict)
from firmware.wheel import WheelError, WheelInfo, install_wheel, read_wheel, sha256_file, verify_installed

FORMAT = "bwv-boot/1"
SLOT_FORMAT = "bwv-slot/1"
SLOT_NAMES = ("a", "b")
BOOT_FILE = "boot.json"
CURRENT = "current"
SLOT_RECORD = "slot.json"
DEFAULT_CONFIG = "config/default.toml"
HISTORY = 20
#: slot states: never booted from unless "good" (committed) or "trying" (on trial)
STATES = ("empty", "installing", "trying", "good", "failed")

Audit = Callable[..., Any]  # AuditLog.append(event, **data)
Progress = Callable[[float, float], None]


class SlotError(Exception):
    """An update step that cannot be done; ``reason`` is a stable code (``busy``,
    ``trial-in-progress``, ``verify-after-write``, ``no-previous-slot``,
    ``rollback-target-damaged``, ``bad-slot-layout``, ``wheel``, ``bundle``, ``aborted``)
    and the message says what to do."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class BootOutcome:
    """What ``on_boot`` decided for this start."""

    action: str  # "none" (no slots), "committed", "trial", "rolled_back", "rollback_failed"
    slot: str | None = None
    version: str | None = None
    attempt: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def on_trial(self) -> bool:
        return self.action == "trial"


def _other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def _fresh_state() -> dict:
    return {"format": FORMAT, "active": None, "previous": None, "trying": None, "attempts": 0,
            "slots": {s: {"state": "empty"} for s in SLOT_NAMES},
            "last_result": None, "history": [], "pending_audit": []}


class Slots:
    """The slot directory of one device. Every method that changes it takes an exclusive
    lock (``flock`` on ``.lock``, plus a thread lock), so the agent's dock update, the
    console's flash and a technician's ``bwv update`` never interleave."""

    def __init__(self, root: Path, *, clock: Clock, max_attempts: int = 3) -> None:
        self.root = Path(root)
        self.clock = clock
        self.max_attempts = max_attempts
        self._tlock = threading.RLock()

    # ------------------------------------------------------------------ paths
    @property
    def boot_path(self) -> Path:
        return self.root / BOOT_FILE

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise SlotError(f"slot {slot!r} is not one of {', '.join(SLOT_NAMES)}", "bad-slot-layout")
        return self.root / "slots" / slot

    def exists(self) -> bool:
        """Whether this device uses slots at all (a source checkout or a simulator does not)."""
        return self.boot_path.exists() or os.path.lexists(self.root / CURRENT)

    def current(self) -> str | None:
        """The slot ``current`` points at, or None."""
        link = self.root / CURRENT
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError:
            raise SlotError(f"{link} is not a symlink; the slot layout is damaged", "bad-slot-layout") from None
        parts = PurePosixPath(target).parts
        if len(parts) != 2 or parts[0] != "slots" or parts[1] not in SLOT_NAMES:
            raise SlotError(f"{link} points at {target!r}, not slots/a or slots/b", "bad-slot-layout")
        return parts[1]

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def _locked(self, *, block: bool) -> Iterator[None]:
        with self._tlock:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise SlotError(f"{self.root}: another update operation is running (lock held)",
                                    "busy") from None
                yield
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ state
    def _now(self) -> str:
        return iso_utc(self.clock.utc_ns(), digits=0)

    def read_state(self) -> dict:
        """``boot.json`` as a dict (a fresh state if there is none). A damaged file is
        rebuilt from the slots on disk; the damage is reported in ``pending_audit``."""
        try:
            raw = self.boot_path.read_bytes()
        except FileNotFoundError:
            return _fresh_state()
        try:
            state = json.loads(raw)
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            for key in ("active", "previous", "trying", "attempts", "slots"):
                if key not in state:
                    raise ValueError(f"no {key!r}")
            state.setdefault("history", [])
            state.setdefault("pending_audit", [])
            return state
        except ValueError as exc:
            return self._rebuild_state(str(exc))

    def _rebuild_state(self, why: str) -> dict:
        """boot.json is written atomically, so this means the medium or a person damaged
        it: trust only what can be re-verified. ``current`` stays as it is and counts as
        committed if it verifies; the other slot is kept only if it verifies too."""
        state = _fresh_state()
        cur = self.current()
        for s in SLOT_NAMES:
            rec = self._slot_record(s)
            if rec is not None and not self.verify_slot(s):
                state["slots"][s] = {"state": "good", "version": rec["version"],
                                     "installed_utc": rec.get("installed_utc")}
        if cur is not None and state["slots"][cur]["state"] == "good":
            state["active"] = cur
            if state["slots"][_other(cur)]["state"] == "good":
                state["previous"] = _other(cur)
        state["pending_audit"].append({"event": "fault", "data": {
            "kind": "update_boot_state_damaged", "message": why, "rebuilt_active": state["active"]}})
        return state

    def _save(self, state: dict) -> None:
        state["updated_utc"] = self._now()
        data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        self.root.mkdir(parents=True, exist_ok=True)
        write_durable(self.root, BOOT_FILE, data, mode=0o644)

    def _result(self, state: dict, result: str, slot: str | None, **data: Any) -> None:
        version = state["slots"].get(slot, {}).get("version") if slot else None
        entry = {"result": result, "slot": slot, "version": version, "utc": self._now(), **data}
        state["last_result"] = entry
        state["history"] = (state.get("history") or [])[-(HISTORY - 1):] + [entry]

    def _audit(self, state: dict, event: str, **data: Any) -> None:
        """Queue a record; ``queued_utc`` says when it happened (it may be appended to
        the audit log later, by the next process that has the store)."""
        state["pending_audit"].append({"event": event, "data": {**data, "queued_utc": self._now()}})

    def _point_current(self, slot: str) -> None:
        """Switch ``current`` atomically: a new symlink under a temp name, rename(2) over
        the old one, fsync the directory so the switch survives a power cut."""
        link = self.root / CURRENT
        if link.exists() and not link.is_symlink():
            raise SlotError(f"{link} is a real directory, not a symlink; refusing to replace it",
                            "bad-slot-layout")
        tmp = self.root / f".{CURRENT}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(f"slots/{slot}", tmp)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def _reconcile(self, state: dict) -> None:
        """Make ``current`` agree with boot.json's ``active`` (a power cut between the two
        writes of a switch leaves them apart; boot.json is the intent)."""
        want, cur = state.get("active"), self.current()
        if want is None or want == cur:
            return
        if state["slots"].get(want, {}).get("state") in ("good", "trying") and not self.verify_slot(want):
            self._point_current(want)
            self._audit(state, "update_switch_completed", slot=want, was=cur)
            return
        # The intended slot is not usable: stay on what runs, if that one is sound.
        if cur is not None and not self.verify_slot(cur):
            self._audit(state, "fault", kind="update_switch_abandoned", slot=want, kept=cur)
            state["slots"][want] = {**state["slots"].get(want, {}), "state": "failed"}
            state["active"], state["trying"], state["attempts"] = cur, None, 0
            state["previous"] = None
            self._result(state, "switch_abandoned", want, reason="target slot does not verify")

    # ------------------------------------------------------------------ verifying
    def _slot_record(self, slot: str) -> dict | None:
        try:
            rec = json.loads((self.slot_dir(slot) / SLOT_RECORD).read_bytes())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("format") == SLOT_FORMAT else None

    def verify_slot(self, slot: str, manifest: BundleManifest | None = None, *,
                    from_medium: bool = False) -> list[str]:
        """Re-hash everything in the slot: the payload against the bundle manifest, the
        unpacked wheel against its RECORD, the default config against the payload, and
        no file the bundle did not bring. Returns the problems (empty = sound)."""
        d = self.slot_dir(slot)
        rec = self._slot_record(slot)
        if rec is None:
            return [f"slot {slot}: no readable {SLOT_RECORD}"]
        try:
            recorded = manifest_from_dict(rec["manifest"])
        except (BundleError, KeyError) as exc:
            return [f"slot {slot}: {SLOT_RECORD} manifest is invalid ({exc})"]
        if manifest is not None and recorded != manifest:
            return [f"slot {slot}: {SLOT_RECORD} does not hold the bundle's manifest"]
        m = manifest or recorded
        problems: list[str] = []
        expected: set[Path] = {d / SLOT_RECORD}
        for pf in m.payload:
            path = d / "payload" / pf.path
            expected.add(path)
            try:
                digest, n = sha256_file(path, from_medium=from_medium)
            except OSError:
                problems.append(f"slot {slot}: payload/{pf.path} missing")
                continue
            if (digest, n) != (pf.sha256, pf.length):
                problems.append(f"slot {slot}: payload/{pf.path} differs from the bundle manifest")
        if problems:  # the wheel itself is damaged: its RECORD cannot be trusted
            return problems
        for w in rec.get("wheels", []):
            try:
                info = read_wheel(d / "payload" / w["payload"])
            except (WheelError, KeyError, TypeError) as exc:
                problems.append(f"slot {slot}: wheel {w!r}: {exc}")
                continue
            expected |= {d / "lib" / e.path for e in info.record}
            problems += [f"slot {slot}: {p}" for p in verify_installed(info, d / "lib",
                                                                         from_medium=from_medium)]
        for c in rec.get("config", []):
            src = m.file(c.get("payload", ""))
            path = d / c.get("path", "")
            expected.add(path)
            if src is None or not path.is_file() or path.is_symlink():
                problems.append(f"slot {slot}: {c.get('path')} missing or not from the bundle")
            elif sha256_file(path, from_medium=from_medium) != (src.sha256, src.length):
                problems.append(f"slot {slot}: {c.get('path')} differs from payload/{src.path}")
        for p in sorted(d.rglob("*")):
            if p.is_dir() and not p.is_symlink():
                continue
            if p not in expected:
                problems.append(f"slot {slot}: {p.relative_to(d)} is not part of the bundle")
        return problems

    # ------------------------------------------------------------------ installing
    def install(self, bundle: Path, manifest: BundleManifest, *, audit: Audit | None = None,
                progress: Progress | None = None,
                keep_going: Callable[[], bool] | None = None) -> dict:
        """Install a bundle whose signature and compatibility were already checked
        (``sync.firmware_fetch``, ``bundle.check_compatible``) into the inactive slot,
        verify it again from the medium, and put it on trial: ``current`` switches to it
        and the next starts count attempts until the health check commits it. The first
        install on an empty device has nothing to fall back to and is committed at once.
        ``keep_going`` is asked between steps (docked and idle?); False aborts, leaving
        the inactive slot marked incomplete and ``current`` untouched."""
        with self._locked(block=False):
            state = self.read_state()
            self._reconcile(state)
            if state["trying"]:
                t = state["trying"]
                raise SlotError(f"slot {t} ({state['slots'][t].get('version')}) is on trial; it "
                                "must pass its health check or be rolled back before another "
                                "install", "trial-in-progress")
            active = state["active"]
            target = "a" if active is None else _other(active)
            try:
                return self._install(state, target, Path(bundle), manifest, progress, keep_going)
            finally:
                self._flush(state, audit)

    def _install(self, state: dict, target: str, bundle: Path, m: BundleManifest,
                 progress: Progress | None, keep_going: Callable[[], bool] | None) -> dict:
        active = state["active"]
        old_version = state["slots"][active].get("version") if active else None
        state["slots"][target] = {"state": "installing", "version": m.version,
                                  "started_utc": self._now()}
        if state["previous"] == target:
            state["previous"] = None  # about to be wiped: no longer a rollback target
        self._audit(state, "update_install_started", slot=target, version=m.version,
                    running_version=old_version)
        self._save(state)
        d = self.slot_dir(target)
        wheels = [pf.path for pf in m.payload if pf.path.endswith(".whl")]
        configs = [pf.path for pf in m.payload if pf.path.endswith(".toml")]
        total = float(2 * len(m.payload) + 2)
        done = [0.0]

        def step(n: float = 1.0, *, check: bool = True) -> None:
            done[0] += n
            if progress:
                progress(min(done[0], total), total)
            if check and keep_going is not None and not keep_going():
                raise SlotError("install aborted: the camera is no longer docked and idle", "aborted")
        try:
            if not wheels:
                raise SlotError(f"bundle {m.version} has no wheel (*.whl) in its payload", "bundle")
            if len(configs) > 1:
                raise SlotError(f"bundle {m.version} has {len(configs)} .toml files; expected one "
                                "default configuration", "bundle")
            self._wipe(target)
            step()
            got = extract_payload(bundle, d / "payload")
            if got != m:
                raise SlotError(f"{bundle.name}: its manifest is not the one that was verified",
                                "bundle")
            step(len(m.payload))
            infos: list[tuple[str, WheelInfo]] = []
            for w in wheels:
                info = install_wheel(d / "payload" / w, d / "lib")
                infos.append((w, info))
            if not any(i.name.lower() == "bwv" and _same_version(i.version, m.version) for _, i in infos):
                raise SlotError(f"bundle {m.version}: no bwv wheel of version {m.version} in it "
                                f"(found {[f'{i.name} {i.version}' for _, i in infos]})", "bundle")
            step()
            config_rec = []
            if configs:
                dst = d / DEFAULT_CONFIG
                dst.parent.mkdir()
                shutil.copyfile(d / "payload" / configs[0], dst)
                _fsync_file(dst)
                fsync_dir(dst.parent)
                config_rec.append({"payload": configs[0], "path": DEFAULT_CONFIG})
            record = {"format": SLOT_FORMAT, "slot": target, "version": m.version,
                      "installed_utc": self._now(), "manifest": m.as_dict(),
                      "wheels": [{"payload": w, "name": i.name, "version": i.version,
                                  "dist_info": i.dist_info} for w, i in infos],
                      "config": config_rec}
            write_durable(d, SLOT_RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(),
                          mode=0o644)
            fsync_dir(d.parent)
            problems = self.verify_slot(target, m, from_medium=True)
            step(len(m.payload))
            if problems:
                raise SlotError(f"slot {target} failed verification after writing: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                                "verify-after-write")
        except (SlotError, BundleError, WheelError, OSError) as exc:
            reason = getattr(exc, "reason", "wheel" if isinstance(exc, WheelError) else "io")
            state["slots"][target] = {"state": "failed" if reason != "aborted" else "installing",
                                      "version": m.version}
            self._result(state, "install_failed" if reason != "aborted" else "install_aborted",
                         target, reason=reason, message=str(exc))
            self._audit(state, "update_install_failed", slot=target, version=m.version,
                        reason=reason, message=str(exc))
            self._save(state)
            if isinstance(exc, SlotError):
                raise
            raise SlotError(f"install of {m.version} into slot {target} failed: {exc}", reason) from exc
        now = self._now()
        if active is None:  # a factory install: nothing to try against
            state["slots"][target] = {"state": "good", "version": m.version, "installed_utc": now,
                                      "committed_utc": now}
            state["active"] = target
            self._result(state, "installed_committed", target, reason="first install on this device")
            self._audit(state, "update_installed", slot=target, version=m.version, trial=False,
                        manifest_created_utc=m.created_utc)
        else:
            state["slots"][target] = {"state": "trying", "version": m.version, "installed_utc": now}
            state["previous"], state["active"], state["trying"] = active, target, target
            state["attempts"] = 0
            self._result(state, "installed", target, previous_version=old_version)
            self._audit(state, "update_installed", slot=target, version=m.version, trial=True,
                        previous_slot=active, previous_version=old_version,
                        manifest_created_utc=m.created_utc)
        self._save(state)  # the intent first …
        self._point_current(target)  # … then the switch; a start in between finishes it
        step(check=False)
        return {"status": "installed", "slot": target, "version": m.version,
                "previous_version": old_version, "trial": active is not None,
                "restart_required": True}

    def _wipe(self, slot: str) -> None:
        """Empty the inactive slot (renamed away first, so a cut mid-delete leaves a
        ``.trash`` directory, never a half-empty slot under the slot's own name)."""
        d = self.slot_dir(slot)
        d.parent.mkdir(parents=True, exist_ok=True)
        trash = d.parent / f".trash-{slot}"
        if trash.exists():
            shutil.rmtree(trash)
        if d.exists():
            os.rename(d, trash)
            fsync_dir(d.parent)
            shutil.rmtree(trash)
        d.mkdir()
        fsync_dir(d.parent)

    # ------------------------------------------------------------------ booting
    def on_boot(self, *, audit: Audit | None = None) -> BootOutcome:
        """Count this start. Called once per agent start, before the agent runs. A slot
        on trial that has used ``max_attempts`` starts without passing its health check
        is rolled back here (its last start may have died before it could report)."""
        if not self.exists():
            return BootOutcome("none")
        with self._locked(block=True):
            state = self.read_state()
            try:
                self._reconcile(state)
                t = state["trying"]
                if t is None:
                    a = state["active"]
                    self._save(state)
                    return BootOutcome("committed", a, state["slots"].get(a, {}).get("version") if a else None)
                if state["attempts"] >= self.max_attempts:
                    return self._rollback(state, f"slot {t} did not pass its health check in "
                                                 f"{state['attempts']} starts", automatic=True)
                state["attempts"] += 1
                n = state["attempts"]
                version = state["slots"][t].get("version")
                self._result(state, "trial_start", t, attempt=n, max_attempts=self.max_attempts)
                self._audit(state, "update_trial_start", slot=t, version=version, attempt=n,
                            max_attempts=self.max_attempts)
                self._save(state)
                return BootOutcome("trial", t, version, attempt=n)
            finally:
                self._flush(state, audit)

    def record_health(self, ok: bool, problems: list[str] | None = None, *,
                      audit: Audit | None = None) -> BootOutcome:
        """The agent's health check result for this start: a pass commits a slot on
        trial; a fail is recorded, and rolls back once the trial's starts are used up."""
        with self._locked(block=True):
            state = self.read_state()
            try:
                t = state["trying"]
                if t is None:
                    a = state["active"]
                    if not ok:
                        self._audit(state, "fault", kind="health_check", slot=a, problems=problems or [])
                        self._save(state)
                    return BootOutcome("committed", a)
                version = state["slots"][t].get("version")
                if ok:
                    state["slots"][t] = {**state["slots"][t], "state": "good", "committed_utc": self._now()}
                    state["trying"] = None
                    self._result(state, "committed", t, attempts=state["attempts"])
                    self._audit(state, "update_committed", slot=t, version=version,
                                attempts=state["attempts"], previous_slot=state["previous"])
                    state["attempts"] = 0
                    self._save(state)
                    return BootOutcome("committed", t, version)
                self._result(state, "health_check_failed", t, attempt=state["attempts"],
                             problems=list(problems or []))
                self._audit(state, "update_health_check_failed", slot=t, version=version,
                            attempt=state["attempts"], problems=list(problems or []))
                if state["attempts"] >= self.max_attempts:
                    return self._rollback(state, f"health check failed in {state['attempts']} "
                                                 f"starts: {(problems or ['?'])[0]}", automatic=True)
                self._save(state)
                return BootOutcome("trial", t, version, attempt=state["attempts"])
            finally:
                self._flush(state, audit)

    def rollback(self, reason: str, *, audit: Audit | None = None) -> BootOutcome:
        """A technician's rollback to the previous slot (``bwv update --rollback``)."""
        if not self.exists():
            raise SlotError(f"no firmware slots under {self.root}", "no-previous-slot")
        with self._locked(block=False):
            state = self.read_state()
            try:
                self._reconcile(state)
                return self._rollback(state, reason, automatic=False)
            finally:
                self._flush(state, audit)

    def _rollback(self, state: dict, reason: str, *, automatic: bool) -> BootOutcome:
        frm, to = state["active"], state["previous"]
        trial = state["trying"] is not None
        if to is None or state["slots"].get(to, {}).get("state") != "good":
            msg = f"no intact previous slot to roll back to (active {frm}, previous {to})"
            self._result(state, "rollback_failed", frm, reason=reason, message=msg)
            self._audit(state, "fault", kind="update_rollback_failed", slot=frm, reason=reason, message=msg)
            self._save(state)
            if not automatic:
                raise SlotError(msg, "no-previous-slot")
            return BootOutcome("rollback_failed", frm, messages=[msg])
        problems = self.verify_slot(to)
        if problems:
            msg = f"previous slot {to} is damaged: {problems[0]}"
            state["slots"][to] = {**state["slots"][to], "state": "failed"}
            state["previous"] = None
            self._result(state, "rollback_failed", frm, reason=reason, message=msg)
            self._audit(state, "fault", kind="update_rollback_failed", slot=frm, reason=reason, message=msg)
            self._save(state)
            if not automatic:
                raise SlotError(msg, "rollback-target-damaged")
            return BootOutcome("rollback_failed", frm, messages=[msg])
        from_version = state["slots"].get(frm, {}).get("version")
        if trial:
            state["slots"][frm] = {**state["slots"][frm], "state": "failed", "failed_utc": self._now()}
        state["active"], state["trying"], state["attempts"] = to, None, 0
        state["previous"] = frm if state["slots"][frm].get("state") == "good" else None
        self._result(state, "rolled_back", to, from_slot=frm, from_version=from_version,
                     reason=reason, automatic=automatic)
        self._audit(state, "update_rolled_back", from_slot=frm, from_version=from_version, to_slot=to,
                    to_version=state["slots"][to].get("version"), reason=reason, automatic=automatic)
        self._save(state)
        self._point_current(to)
        return BootOutcome("rolled_back", to, state["slots"][to].get("version"), messages=[reason])

    # ------------------------------------------------------------------ audit
    def _flush(self, state: dict, audit: Audit | None) -> None:
        """Hand pending audit records to ``audit``; each is removed from boot.json only
        after it was appended (a cut in between repeats it, never loses it)."""
        if audit is None or getattr(audit, "defers", False) or not state.get("pending_audit"):
            return  # no store here: the records stay queued
        while state["pending_audit"]:
            entry = state["pending_audit"][0]
            audit(entry["event"], **entry["data"])
            state["pending_audit"].pop(0)
            self._save(state)

    def defer_audit(self, event: str, **data: Any) -> None:
        """Keep an audit record in boot.json until a process with the store flushes it
        (a technician's ``bwv update`` while the agent holds the store). Not for use as
        the ``audit`` of a slot operation (that takes the lock): see ``Deferred``."""
        with self._locked(block=True):
            state = self.read_state()
            self._audit(state, event, **data)
            self._save(state)

    def flush_audit(self, audit: Audit) -> int:
        """Append the records that waited for a store; returns how many."""
        if not self.boot_path.exists():
            return 0
        with self._locked(block=True):
            state = self.read_state()
            n = len(state["pending_audit"])
            self._flush(state, audit)
            return n

    # ------------------------------------------------------------------ status
    def status(self, *, verify: bool = False) -> dict:
        """For ``bwv update --status``: both slots, which runs, which is on trial."""
        state = self.read_state()
        cur = None
        try:
            cur = self.current()
        except SlotError as exc:
            cur = f"damaged: {exc}"
        slots = {}
        for s in SLOT_NAMES:
            info = dict(state["slots"].get(s, {"state": "empty"}))
            info["current"] = cur == s
            info["active"] = state["active"] == s
            info["trying"] = state["trying"] == s
            info["previous"] = state["previous"] == s
            if verify and info.get("state") != "empty":
                problems = self.verify_slot(s)
                info["verified"] = not problems
                info["problems"] = problems
            slots[s] = info
        return {"root": str(self.root), "uses_slots": self.exists(), "current": cur,
                "active": state["active"], "previous": state["previous"], "trying": state["trying"],
                "attempts": state["attempts"], "max_attempts": self.max_attempts, "slots": slots,
                "last_result": state["last_result"], "history": state.get("history", []),
                "pending_audit": len(state["pending_audit"]), "updated_utc": state.get("updated_utc")}

    def running_version(self) -> str | None:
        """The version of the committed (or on-trial) slot ``current`` runs."""
        state = self.read_state()
        a = state["active"]
        return state["slots"].get(a, {}).get("version") if a else None


class Deferred:
    """An audit sink for a process without the store: records go to boot.json's queue,
    and slot operations leave their own records queued (``defers``)."""

    defers = True

    def __init__(self, slots: Slots) -> None:
        self.slots = slots

    def __call__(self, event: str, **data: Any) -> None:
        self.slots.defer_audit(event, **data)


def _same_version(a: str, b: str) -> bool:
    try:
        return compare_versions(a, b) == 0
    except BundleError:
        return a == b


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def from_config(cfg, clock: Clock) -> Slots:
    """The device's slots, as ``[update]`` configures them."""
    u = cfg.update
    return Slots(Path(u.slots_dir), clock=clock, max_attempts=u.max_boot_attempts)
