"""The start-up health check that decides whether a firmware slot on trial is kept.

A slot is committed only when the camera it runs is still a working evidence camera:
the encoder delivers key frames, the store is open and takes a durable write, the
device key signs (and the signature verifies with the device record), the clock is
set, the loops the service watchdog watches make progress, the technician console's
port is there when the console is enabled, and the slot's own code imports and
reports the version the bundle promised. That last check runs the slot's
installed package in a separate interpreter (``PYTHONPATH=<slot>/lib``), so a bundle
with a broken module fails here and is rolled back after its starts run out, instead
of being committed because the process that checked it was running older code.

Each check is one function returning a named ``Check``; ``run_checks`` collects them.
Checks work while docked (the camera keeps encoding there, the store is not written
by capture), since that is where an updated camera first starts.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from buffer.fsutil import unlink_durable, write_durable

PROBE_TIMEOUT_S = 120.0
_PROBE = r"""
import importlib.metadata as md, json, sys
import firmware, firmware.agent, firmware.cli, firmware.main, firmware.slots
from firmware import config
if sys.argv[1]:
    config.load(sys.argv[1])
print(json.dumps({"file": firmware.__file__, "version": md.version("bwv")}))
"""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class HealthReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                                          for c in self.checks]}


def check_camera(agent) -> Check:
    n = getattr(agent, "keyframes_seen", 0)
    return Check("camera", n > 0, f"{n} key frame(s) from the encoder" if n else
                 "no key frame from the encoder since start")


def check_store(agent) -> Check:
    """Open and durably writable: a probe file written (fsync, rename, directory fsync)
    and removed, on the store worker so it queues behind the store's own work."""
    store = getattr(agent, "_store", None)
    if store is None:
        return Check("store", False, "store is not open")

    def probe() -> None:  # one fixed hidden name: a cut mid-probe leaves one small file
        path = write_durable(Path(store.root), ".health-probe", b"bwv health probe\n")
        unlink_durable(path)
    try:
        agent._worker.call(probe)
    except OSError as exc:
        return Check("store", False, f"{store.root} not writable: {exc.strerror or exc}")
    return Check("store", True, f"{store.root} open and writable")


def check_keys(keys) -> Check:
    try:
        record = keys.device()
        nonce = b"bwv-health/1\n" + secrets.token_bytes(16)
        sig = keys.sign(nonce)
        keys.agency_recipient()
    except Exception as exc:  # noqa: BLE001 — any key-store failure is a failed check
        return Check("keys", False, f"{type(exc).__name__}: {exc}")
    if not record.verifies(sig, nonce):
        return Check("keys", False, "the device key's signature does not verify with the device record")
    return Check("keys", True, f"device {record.device_id} signs; agency recipient present")


def check_console(cfg, port: str | None = None) -> Check | None:
    """Only when the console is enabled (``[console]``). ``port`` is the one the running
    console service opened (on the simulator a pty, not ``console.port``)."""
    section = getattr(cfg, "console", None)
    if section is None or not getattr(section, "enabled", False):
        return None
    port = port or getattr(section, "port", "")
    ok = bool(port) and os.path.exists(port)
    return Check("console", ok, f"{port} present" if ok else f"console port {port!r} missing")


def check_clock(agent) -> Check:
    """Time is evidence: firmware that loses the clock discipline (chrony, RTC, GPS) is
    not kept. (An update was only fetched with a set clock: TUF refuses otherwise.)"""
    st = agent.clock.state()
    return Check("clock", st.synced, f"clock set ({st.source})" if st.synced else
                 f"clock not set (source {st.source!r})")


def check_watchdog(watchdog) -> Check | None:
    """The loops the service watchdog watches (capture, storage) are making progress."""
    if watchdog is None:
        return None
    stuck = watchdog.stuck()
    return Check("watchdog", not stuck, "capture and storage loops progressing" if not stuck
                 else f"loop(s) not progressing: {', '.join(stuck)}")


def check_slot_code(slot_dir: Path, version: str | None, *, python: str = sys.executable,
                    timeout: float = PROBE_TIMEOUT_S) -> Check:
    """Import the slot's package in a fresh interpreter that sees only the slot's
    ``lib`` (and the base environment's dependencies), validate the slot's default
    config with the slot's own schema, and compare the version it reports."""
    slot_dir = Path(slot_dir)
    lib = (slot_dir / "lib").resolve()
    cfg = slot_dir / "config" / "default.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(lib), PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    try:
        # -P: no script directory on sys.path; cwd is the slot, not a source checkout.
        res = subprocess.run([python, "-P", "-c", _PROBE, str(cfg) if cfg.is_file() else ""],
                             cwd=slot_dir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Check("slot_code", False, f"importing the slot's package took over {timeout:.0f} s")
    except OSError as exc:
        return Check("slot_code", False, f"cannot run {python}: {exc}")
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("slot_code", False, f"the slot's package does not import: {last}")
    try:
        got = json.loads(res.stdout.strip().splitlines()[-1])
        where = Path(got["file"]).resolve()
    except (ValueError, KeyError, IndexError, TypeError):
        return Check("slot_code", False, f"unexpected probe output {res.stdout[-200:]!r}")
    if not where.is_relative_to(lib):
        return Check("slot_code", False, f"imported firmware from {where}, not from the slot ({lib})")
    if version is not None and got["version"] != version:
        return Check("slot_code", False, f"the slot reports version {got['version']}, its "
                                         f"bundle says {version}")
    return Check("slot_code", True, f"firmware {got['version']} imports from {lib}")


def run_checks(agent, cfg, *, slot_dir: Path | None, version: str | None,
               console_port: str | None = None, watchdog=None) -> HealthReport:
    checks = [check_camera(agent), check_store(agent), check_keys(agent.keys), check_clock(agent)]
    for optional in (check_console(cfg, console_port), check_watchdog(watchdog)):
        if optional is not None:
            checks.append(optional)
    if slot_dir is not None:
        checks.append(check_slot_code(slot_dir, version))
    return HealthReport(checks)
