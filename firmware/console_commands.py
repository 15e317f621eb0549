"""What a technician can ask of a running camera over the console, and nothing more.

Commands: ``info`` (no authentication needed), ``selftest``, ``log``, ``assign``,
``provision`` and the three steps of ``flash`` (``flash_begin``, ``flash_chunk``,
``flash_commit``). None reads or deletes evidence: there is no command that lists,
reads, exports or removes a segment or a clip.

Everything that touches the store runs on the agent's store worker
(``Agent.store_call``): the console thread never opens, reads or writes the store
itself, so the store keeps its one-user-at-a-time rule. Outputs are switched under the
agent lock (``Agent.hardware_call``) and put back as the LED patterns had them.

``AgentDevice`` adapts a running agent; the server (``firmware.console_server``)
handles framing, sessions, authentication and auditing, then calls ``run_command``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buffer.fsutil import fsync_dir, unlink_durable, write_durable
from drivers.keystore import KeyStoreError, TechnicianKey
from firmware import FIRMWARE_VERSION
from firmware import provision as prov
from firmware.log import event

log = logging.getLogger("bwv.console")

CHUNK_MAX = 32 * 1024  # raw bytes per flash chunk (base64 in JSON stays under MAX_PAYLOAD)
MAX_BUNDLE = 1024**3
FSYNC_EVERY = 1024 * 1024  # a resumed flash restarts at most this far back after a power cut
STAGING_DIR = "update-staging"
LOG_PIECE = 24_000  # bytes of log text per stream frame
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_OFFICER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}\Z")

Installer = Callable[[Path], dict]


class CommandError(Exception):
    """A refused or failed command; ``code`` is the error frame's ``error``."""

    def __init__(self, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.data = data  # extra fields of the error frame (e.g. the offset a flash needs)


@dataclass
class Session:
    """One technician's session: opened by ``hello``, authenticated by ``auth``."""

    id: str
    nonce: str
    opened_at: float
    technician: TechnicianKey | None = None
    auth_failures: int = 0
    flash: FlashTransfer | None = None
    commands: int = 0
    frames_rejected: int = 0


@dataclass
class Call:
    """One command as the server hands it over."""

    name: str
    args: dict
    session: Session | None
    stream: Callable[[dict], None]


# ------------------------------------------------------------------------- flashing
@dataclass
class FlashTransfer:
    """A bundle arriving in chunks into ``<staging>/<sha256>.part`` (kept across
    disconnects, so a rerun resumes where the last one stopped)."""

    sha256: str
    size: int
    name: str
    part: Path
    received: int
    resumed_from: int
    _unsynced: int = 0

    def append(self, offset: int, data: bytes, crc: int) -> int:
        if offset != self.received:
            raise CommandError("flash_offset", f"chunk at offset {offset}, but the device has "
                                               f"{self.received} bytes; send from {self.received}",
                               expected=self.received)
        if zlib.crc32(data) != crc:
            raise CommandError("flash_crc", f"chunk at offset {offset}: CRC-32 does not match its data")
        if offset + len(data) > self.size:
            raise CommandError("flash_size", f"chunk ends at {offset + len(data)}, past the "
                                             f"bundle's {self.size} bytes")
        fd = os.open(self.part, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self._unsynced += len(data)
            if self._unsynced >= FSYNC_EVERY or offset + len(data) == self.size:
                os.fsync(fd)
                self._unsynced = 0
        finally:
            os.close(fd)
        self.received = offset + len(data)
        return self.received


def staging_dir_for(store_dir: Path) -> Path:
    """Beside the store, never inside it: a bundle is not evidence."""
    return Path(store_dir).resolve().parent / STAGING_DIR


def begin_flash(staging: Path, sha256: str, size: int, name: str) -> FlashTransfer:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise CommandError("bad_args", "sha256 must be 64 lowercase hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE:
        raise CommandError("bad_args", f"size must be 1..{MAX_BUNDLE} bytes")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(name or "bundle"))[:100]
    staging.mkdir(parents=True, exist_ok=True, mode=0o750)
    part, meta = staging / f"{sha256}.part", staging / f"{sha256}.json"
    for stale in staging.iterdir():  # one bundle at a time: an abandoned one's bytes go
        if stale.suffix in (".part", ".json") and stale.stem != sha256:
            unlink_durable(stale)
    received = part.stat().st_size if part.exists() else 0
    if meta.exists():
        try:
            known = json.loads(meta.read_text())
        except ValueError:
            known = {}
        if known.get("size") != size:
            received = 0  # the same hash announced with another size: start over
    if received > size or not meta.exists():
        received = 0
    if received == 0:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        os.close(fd)
        write_durable(staging, meta.name, json.dumps({"size": size, "name": name}).encode())
    free = shutil.disk_usage(staging).free
    if size - received > free:
        raise CommandError("no_space", f"the bundle needs {size - received} more bytes, "
                                       f"{free} are free in {staging}")
    return FlashTransfer(sha256, size, name, part, received, received)


def finish_flash(t: FlashTransfer, installer: Installer) -> dict:
    if t.received != t.size:
        raise CommandError("flash_incomplete", f"{t.received} of {t.size} bytes received")
    h = hashlib.sha256()
    with open(t.part, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    staging = t.part.parent
    if h.hexdigest() != t.sha256:
        unlink_durable(t.part)
        unlink_durable(staging / f"{t.sha256}.json")
        raise CommandError("flash_hash", f"the received bundle's SHA-256 is {h.hexdigest()}, not "
                                         f"{t.sha256}; it was discarded, send it again")
    bundle = staging / f"{t.sha256}-{t.name}"
    os.replace(t.part, bundle)
    fsync_dir(staging)
    try:
        result = installer(bundle)
    except CommandError:
        raise
    except Exception as exc:  # noqa: BLE001 — the installer's named error goes to the technician
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise CommandError("install_failed", f"{reason}: {exc}") from None
    finally:
        unlink_durable(bundle)
        unlink_durable(staging / f"{t.sha256}.json")
    return result if isinstance(result, dict) else {"result": result}


# ------------------------------------------------------------------- the device side
def _firmware(cfg, clock) -> dict:
    """Version and slot from the A/B slots when this firmware has them."""
    try:
        from firmware.slots import from_config
        slots = from_config(cfg, clock)
        if slots.exists():
            return {"version": slots.running_version() or FIRMWARE_VERSION,
                    "slot": slots.current() or "unknown"}
    except Exception as exc:  # noqa: BLE001 — info must answer even with damaged slots
        return {"version": FIRMWARE_VERSION, "slot": "unknown", "slot_error": str(exc)}
    return {"version": FIRMWARE_VERSION, "slot": "unknown"}


def _check(ok: bool | None, reason: str) -> dict:
    return {"result": "skip" if ok is None else ("pass" if ok else "fail"), "reason": reason}


class AgentDevice:
    """The console's view of a running agent (threaded store worker required)."""

    def __init__(self, agent, *, installer: Installer | None = None, wait_s: float | None = None,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self.cfg = agent.cfg
        self.installer = installer or default_installer(agent)
        self._timer = timer
        seg = agent.cfg.camera.segment_seconds
        self.wait_s = wait_s if wait_s is not None else max(3.0, 2 * seg + 1.0)
        self.staging = staging_dir_for(agent.store_dir)
        self._stop = threading.Event()

    # ------------------------------------------------------------------ basics
    def device_id(self) -> str:
        return self.agent.keys.device().device_id

    def technician_keys(self) -> list[TechnicianKey]:
        return self.agent.keys.technician_keys()

    def audit(self, event_name: str, **data: Any) -> None:
        if self.agent.state.value == "stopped":  # its worker is gone: a call would never return
            raise RuntimeError(f"agent stopped; {event_name} not audited")
        self.agent.store_call(lambda s: s.audit.append(event_name, **data))

    def close(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------- commands
    def info(self, call: Call) -> dict:
        a = self.agent
        storage = a.store_call(lambda s: {
            "used_bytes": s.used_bytes, "pinned_bytes": s.pinned_bytes(),
            "budget_bytes": s.settings.max_bytes, "unsynced_clips": len(prov.unsynced_clips_of(s))})
        storage["free_bytes"] = max(0, storage["budget_bytes"] - storage["used_bytes"])
        try:
            storage["filesystem_free_bytes"] = shutil.disk_usage(a.store_dir).free
        except OSError:
            storage["filesystem_free_bytes"] = None
        battery: dict
        if a.battery is None:
            battery = {"error": "no fuel gauge"}
        else:
            try:
                r = a.hardware_call(a.battery.read)
                battery = {"percent": r.percent, "voltage": r.voltage, "charging": r.charging}
            except Exception as exc:  # noqa: BLE001 — a lying gauge is reported, not fatal
                battery = {"error": str(exc)}
        from drivers.clock import iso_utc
        clock = a.clock.state().as_dict()
        clock["utc"] = iso_utc(a.clock.utc_ns())
        return {"device_id": self.device_id(), "firmware": _firmware(self.cfg, a.clock),
                "state": a.state.value, "officer_id": a.officer_id, "storage": storage,
                "battery": battery, "clock": clock, "platform": a.platform,
                "authenticated": bool(call.session and call.session.technician)}

    def selftest(self, call: Call) -> dict:
        a = self.agent
        if a.state.value == "recording":
            raise CommandError("refused", "the camera is recording; a self-test would flash its "
                                          "LEDs and buzz the officer — stop the recording first")
        frames0, keyframes0 = a.frames_seen, a.keyframes_seen
        gps_lines0 = a.gps.stats.get("lines", 0) if a.gps is not None else 0
        checks: dict[str, dict] = {}
        checks.update(self._outputs())
        checks.update(self._buttons())
        checks["store_writable"] = self._store_writable()
        checks["keys"] = self._keys()
        st = a.clock.state()
        checks["clock"] = _check(st.synced, f"source {st.source}" if st.synced else
                                 f"clock not set (source {st.source})")
        # The two that need time: key frames from the encoder, NMEA from the receiver.
        deadline = self._timer() + self.wait_s
        cam_ok = gps_ok = False
        while True:
            cam_ok = a.keyframes_seen > keyframes0
            gps_ok = a.gps is None or (a.gps.stats.get("lines", 0) > gps_lines0)
            if (cam_ok and gps_ok) or self._timer() >= deadline or self._stop.is_set():
                break
            self._stop.wait(0.05)
        frames = a.frames_seen - frames0
        checks["camera"] = _check(cam_ok, f"{a.keyframes_seen - keyframes0} key frame(s) in "
                                  f"{frames} frame(s)" if cam_ok else
                                  f"no key frame within {self.wait_s:g} s ({frames} frame(s))")
        if a.gps is None:
            checks["gps"] = _check(None, "GPS disabled (gps.enabled = false)")
        else:
            fix = a.gps.latest(self.cfg.gps.fix_max_age_s)
            lines = a.gps.stats.get("lines", 0) - gps_lines0
            checks["gps"] = _check(gps_ok, (f"{lines} NMEA line(s) seen; "
                                            f"{'fix' if fix else 'no fix'}") if gps_ok else
                                   f"no NMEA line within {self.wait_s:g} s "
                                   f"(port {'open' if a.gps.connected else 'not open'})")
        ok = all(c["result"] != "fail" for c in checks.values())
        return {"ok": ok, "checks": checks}

    def _outputs(self) -> dict[str, dict]:
        a = self.agent
        controls = a.controls

        def toggle() -> dict[str, dict]:
            out = {}
            levels = a.feedback.levels
            for name in ("green", "red", "haptic", "buzzer"):
                try:
                    controls.set_output(name, True)
                    on = controls.output_level(name)
                    controls.set_output(name, False)
                    off = controls.output_level(name)
                    out[f"output_{name}"] = _check(on and not off, "switched on and off" if on and not off
                                                   else f"pin reads {int(on)} after on, {int(off)} after off")
                except Exception as exc:  # noqa: BLE001 — a broken pin is a failed check
                    out[f"output_{name}"] = _check(False, f"{type(exc).__name__}: {exc}")
                finally:
                    try:
                        controls.set_output(name, levels.get(name, False))  # as the pattern had it
                    except Exception:  # already this check's failure
                        log.exception("output %s could not be restored", name)
            return out
        return a.hardware_call(toggle)

    def _buttons(self) -> dict[str, dict]:
        out = {}
        for b in ("record", "function"):
            try:
                pressed = self.agent.controls.is_pressed(b)
                out[f"button_{b}"] = _check(not pressed, "reads released" if not pressed else
                                            "reads pressed with nobody pressing it (stuck?)")
            except Exception as exc:  # noqa: BLE001
                out[f"button_{b}"] = _check(False, f"cannot read: {exc}")
        return out

    def _store_writable(self) -> dict:
        probe = secrets.token_bytes(64)

        def op(store) -> bool:
            path = write_durable(store.root, ".console-selftest", probe, mode=0o600)
            try:
                return path.read_bytes() == probe
            finally:
                unlink_durable(path)
        try:
            ok = self.agent.store_call(op)
            return _check(ok, "wrote, fsynced, read back and removed a probe file" if ok
                          else "the probe read back different bytes")
        except Exception as exc:  # noqa: BLE001
            return _check(False, f"{type(exc).__name__}: {exc}")

    def _keys(self) -> dict:
        keys = self.agent.keys
        try:
            record = keys.device()
            msg = b"bwv-selftest\n" + secrets.token_bytes(16)
            if not record.verifies(keys.sign(msg), msg):
                return _check(False, "the device key's signature does not verify with its record")
            keys.agency_recipient()
            techs = keys.technician_keys()
            if not techs:
                return _check(False, "no technician keys provisioned")
            return _check(True, f"device key signs; agency recipient; {len(techs)} technician key(s)")
        except KeyStoreError as exc:
            return _check(False, str(exc))

    def log(self, call: Call) -> dict:
        tail = call.args.get("tail")
        if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 1):
            raise CommandError("bad_args", "tail must be a positive integer")
        # The size is taken on the worker: every record appended before this call is in.
        # The file is append-only, so reading it here (not on the worker, which must keep
        # sealing segments) sees exactly those bytes.
        path, size = self.agent.store_call(
            lambda s: (s.root / "audit.log", (s.root / "audit.log").stat().st_size))
        with open(path, "rb") as f:
            data = f.read(size)
        data = data[:data.rfind(b"\n") + 1]
        records = data.count(b"\n")
        if tail and tail < records:
            data = b"\n".join(data.split(b"\n")[-tail - 1:])
            records = tail
        # The log is ASCII (canonical JSON, base64), so JSON escaping at most doubles a
        # piece: pieces of LOG_PIECE bytes always fit a frame, however long a record is.
        for start in range(0, len(data), LOG_PIECE):
            call.stream({"text": data[start:start + LOG_PIECE].decode("ascii", "replace")})
        return {"records": records}

    def assign(self, call: Call) -> dict:
        officer = call.args.get("officer_id")
        if not isinstance(officer, str) or not _OFFICER.match(officer):
            raise CommandError("bad_args", "officer_id must be 1-64 of [A-Za-z0-9 ._@-]")
        t = call.session.technician
        self.agent.assign(officer, by=f"console: {t.name} ({t.fingerprint[:16]})")
        stored = self.agent.store_call(lambda s: s.get_setting("officer_id"))
        return {"officer_id": stored}

    def provision(self, call: Call) -> dict:
        a = call.args
        try:
            techs = tuple(TechnicianKey(str(t["name"]), bytes.fromhex(t["public_key"]))
                          for t in a.get("technicians", []))
            sync = a.get("sync", {}) or {}
            if not isinstance(sync, dict):
                raise TypeError("sync must be an object")
            req = prov.ProvisionRequest(str(a["device_id"]), str(a["recipient"]),
                                        a.get("officer_id"), techs, sync,
                                        by=f"console: {call.session.technician.name}", via="console")
        except (KeyError, TypeError, ValueError) as exc:
            raise CommandError("bad_args", f"provision needs device_id, recipient, technicians "
                                           f"[{{name, public_key}}] ({exc})") from None
        try:
            req = prov.validate_request(req, self.cfg)
        except prov.ProvisionError as exc:
            raise CommandError("bad_args", str(exc)) from None
        clips = self.agent.store_call(prov.unsynced_clips_of)
        if clips:
            self.audit("provisioning_refused", action="re-provision", unsynced_clips=len(clips),
                       clip_ids=clips, by=req.by)
            raise CommandError("unsynced_evidence", str(prov.UnsyncedEvidence(clips, "re-provision")))
        keys_dir = getattr(self.agent.keys, "directory", None)
        if keys_dir is None:
            raise CommandError("refused", "this key store cannot be re-provisioned over the console")
        record = prov.stage(req, Path(keys_dir))
        self.audit("provisioning_staged", new_public_key=record.public_key.hex(), **req.summary())
        # Applied with the agent stopped: the service stops now and applies it as it starts.
        self.agent.shutdown_requested = "reprovision"
        event(log, "provisioning staged; restarting", device_id=record.device_id)
        return {"device": json.loads(record.to_json()), "restart": True,
                "message": "staged; the camera restarts and applies it (refused then if a clip "
                           "was recorded meanwhile)"}

    def flash_begin(self, call: Call) -> dict:
        a = call.args
        t = begin_flash(self.staging, a.get("sha256"), a.get("size"), a.get("name", "bundle"))
        call.session.flash = t
        return {"offset": t.received, "chunk_max": CHUNK_MAX}

    def flash_chunk(self, call: Call) -> dict:
        t = self._transfer(call)
        a = call.args
        try:
            data = base64.b64decode(a["data"], validate=True)
            offset, crc = int(a["offset"]), int(a["crc32"])
        except (KeyError, ValueError, TypeError, OverflowError) as exc:  # int(1e400): Overflow
            raise CommandError("bad_args", f"flash_chunk needs offset, crc32, data ({exc})") from None
        if len(data) > CHUNK_MAX:
            raise CommandError("bad_args", f"chunk of {len(data)} bytes exceeds {CHUNK_MAX}")
        return {"offset": t.append(offset, data, crc)}

    def flash_commit(self, call: Call) -> dict:
        t = self._transfer(call)
        try:
            installed = finish_flash(t, self.installer)
        except CommandError as exc:
            if exc.code != "flash_incomplete":  # the rest may still come in this session
                call.session.flash = None
            raise
        call.session.flash = None
        return {"sha256": t.sha256, "installed": installed}

    def _transfer(self, call: Call) -> FlashTransfer:
        t = call.session.flash
        if t is None or t.sha256 != call.args.get("sha256"):
            raise CommandError("no_flash", "no flash of this bundle in this session; send flash_begin")
        return t


def default_installer(agent) -> Installer:
    """The A/B installer (``firmware.updating``), imported when a flash completes. After
    an install the service restarts into the new slot's trial (exit 75), as after a dock
    update: otherwise the old code would go on running while ``current`` and ``info``
    name the new slot, and the trial would wait for a power cycle."""
    def install(path: Path) -> dict:
        try:
            from firmware.updating import (
                RESTART_REASON,
                conditions_of,
                install_offline_archive,
            )
        except ImportError as exc:
            raise CommandError("install_unavailable",
                               f"this firmware has no offline installer (firmware.updating: {exc})") from None
        result = install_offline_archive(path, cfg=agent.cfg, agent=agent)
        if result.get("restart_required") and not conditions_of(agent).recording:
            agent.shutdown_requested = agent.shutdown_requested or RESTART_REASON
            result = {**result, "restart": True}
        return result
    return install


@dataclass(frozen=True)
class Command:
    fn: str           # method of AgentDevice
    needs_auth: bool
    audit_args: Callable[[dict], dict] = field(default=lambda args: {})


COMMANDS: dict[str, Command] = {
    "info": Command("info", False),
    "selftest": Command("selftest", True),
    "log": Command("log", True, lambda a: {"tail": a.get("tail")}),
    "assign": Command("assign", True, lambda a: {"officer_id": a.get("officer_id")}),
    "provision": Command("provision", True, lambda a: {"device_id": a.get("device_id")}),
    "flash_begin": Command("flash_begin", True, lambda a: {"sha256": a.get("sha256"), "size": a.get("size"),
                                                           "name": a.get("name")}),
    "flash_chunk": Command("flash_chunk", True),
    "flash_commit": Command("flash_commit", True, lambda a: {"sha256": a.get("sha256")}),
}
#: Chunks are many and small: the flash is audited at begin, commit and interruption.
UNAUDITED = frozenset({"flash_chunk"})
