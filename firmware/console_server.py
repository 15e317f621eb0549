"""The device side of the technician console: one thread on a serial port.

It reads frames (``firmware.console_frame``), answers every rejected one with an error
frame naming the reason, and runs a request only when the frame checked out, the request
is well-formed and, for anything but ``info``, the session is authenticated.

Sessions. ``hello`` opens one: the device answers with its id, a fresh random session id
and a fresh random nonce. ``auth`` proves a technician key listed at provisioning by an
Ed25519 signature over the device id, that session id, that nonce and the key
(``console_frame.auth_message``), so a signature is worth nothing on another device, in
another session or for another key. A new ``hello`` ends the previous session; ``bye``,
``session_timeout_s`` of silence, three failed ``auth`` or the server stopping end it too.

Auditing. Every session opening, authentication (success and failure, with the key's
fingerprint), closing and every command (with its outcome) goes into the agent's audit
log through the store worker. Rejected frames are counted and recorded when the session
closes (one record a frame would let line noise fill the log). A flash is recorded when
it starts, completes, fails, or is cut off.

A note on threads: the server runs on its own thread and never takes the agent lock
itself; the commands reach the store through ``Agent.store_call`` and the outputs through
``Agent.hardware_call``. Requests are handled one at a time, in order of arrival.
"""
from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from firmware.console_commands import (
    COMMANDS,
    UNAUDITED,
    AgentDevice,
    Call,
    CommandError,
    Installer,
    Session,
)
from firmware.console_frame import (
    Frame,
    FrameEncodeError,
    FrameError,
    FrameReader,
    MsgType,
    auth_message,
    encode,
)
from firmware.log import event

log = logging.getLogger("bwv.console")

PROTOCOL = 1
MAX_AUTH_FAILURES = 3


class ConsoleServer:
    """Serve the console on ``port`` (a path or pyserial URL) for ``device``.

    ``timer`` (seconds, monotonic) times the serial line: frame and session timeouts
    are about the cable and the technician, in real time, whatever the agent's clock.
    """

    def __init__(self, port: str, device: AgentDevice, *, baud: int = 115200,
                 session_timeout_s: float = 300.0, auth_failure_delay_s: float = 1.0,
                 reopen_interval_s: float = 2.0, timer: Callable[[], float] = time.monotonic,
                 frame_timeout_s: float | None = None, unauth_per_minute: int = 60) -> None:
        self.port = port
        self.device = device
        self.baud = baud
        self.session_timeout_s = session_timeout_s
        self.auth_failure_delay_s = auth_failure_delay_s
        self.reopen_interval_s = reopen_interval_s
        self._timer = timer
        self._reader = FrameReader(timer, **({"frame_timeout_s": frame_timeout_s}
                                             if frame_timeout_s is not None else {}))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ser = None
        self.session: Session | None = None
        self._last_activity = 0.0
        self._last: tuple[int, dict, list[bytes]] | None = None  # request id, payload, answer
        self.stats = {"frames": 0, "rejected": 0, "commands": 0, "sessions": 0}
        self._open_failed_logged = False
        self._tried = threading.Event()
        self.unauth_per_minute = unauth_per_minute
        self._unauth: collections.deque[float] = collections.deque()
        self._limited = 0
        self._limited_audited_at: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, wait_s: float = 5.0) -> ConsoleServer:
        """Start the thread; returns once the port was opened (or its first try failed),
        so nothing a client sends right after is flushed by the opening."""
        self._thread = threading.Thread(target=self._run, name="bwv-console", daemon=True)
        self._thread.start()
        self._tried.wait(wait_s)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving: the open session is closed (audited) and the port released."""
        self._stop.set()
        self.device.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._ser is None:
                    opened = self._open()
                    self._tried.set()
                    if not opened:
                        self._stop.wait(self.reopen_interval_s)
                        continue
                try:
                    self._poll_once()
                except (serial.SerialException, OSError) as exc:
                    event(log, "console port lost", level=logging.WARNING, port=self.port, error=str(exc))
                    self._close_session("link_lost")
                    self._close_port()
                    self._stop.wait(self.reopen_interval_s)
                except Exception:  # the console must never take the camera down
                    log.exception("console loop failed; continuing")
                    self._stop.wait(0.1)
        finally:
            self._close_session("server_stop")
            self._close_port()

    def _open(self) -> bool:
        try:
            self._ser = serial.serial_for_url(self.port, baudrate=self.baud, timeout=0.05,
                                              write_timeout=5.0)
        except (serial.SerialException, OSError, ValueError) as exc:
            if not self._open_failed_logged:
                event(log, "console port not available", level=logging.WARNING, port=self.port,
                      error=str(exc))
                self._open_failed_logged = True
            return False
        self._open_failed_logged = False
        event(log, "console listening", port=self.port)
        return True

    def _close_port(self) -> None:
        if self._ser is not None:
            try:
                self._ser.close()
            except Exception as exc:  # noqa: BLE001 — a port that is gone is closed enough
                event(log, "console port close failed", level=logging.DEBUG, error=str(exc))
            self._ser = None

    # ------------------------------------------------------------------ the loop
    def _poll_once(self) -> None:
        ser = self._ser
        data = ser.read(1)
        if data:
            waiting = ser.in_waiting
            if waiting:
                data += ser.read(waiting)
        for item in self._reader.feed(data):
            self._handle(item)
        expired = self._reader.expire()
        if expired is not None:
            self._reject(expired)
        if self.session is not None and \
                self._timer() - self._last_activity > self.session_timeout_s:
            self._close_session("timeout")

    def _send(self, type_: MsgType, rid: int, payload: dict) -> bytes:
        try:
            frame = encode(type_, rid, payload)
        except FrameEncodeError as exc:
            frame = encode(MsgType.ERROR, rid, {"error": "internal", "message": str(exc)})
        self._ser.write(frame)
        self._ser.flush()
        return frame

    def _reject(self, err: FrameError) -> None:
        self.stats["rejected"] += 1
        if self.session is not None:
            self.session.frames_rejected += 1
        event(log, "console frame rejected", level=logging.DEBUG, reason=err.reason, detail=err.detail)
        self._send(MsgType.ERROR, err.request_id, {"error": err.reason, "message": err.detail})

    def _handle(self, item: Frame | FrameError) -> None:
        if isinstance(item, FrameError):
            self._reject(item)
            return
        self.stats["frames"] += 1
        if item.type is not MsgType.REQUEST:
            self._reject(FrameError("bad_type", f"the device accepts requests only, got {item.type.name}",
                                    item.request_id))
            return
        if self._last is not None and self._last[0] == item.request_id and self._last[1] == item.payload:
            for frame in self._last[2]:  # a retry of the last request: same answer, not run again
                self._ser.write(frame)
            self._ser.flush()
            return
        p = item.payload
        cmd, args, sid = p.get("cmd"), p.get("args", {}), p.get("session")
        if not isinstance(cmd, str) or not isinstance(args, dict) or not (sid is None or isinstance(sid, str)):
            self._reject(FrameError("bad_request", "payload must be {cmd: string, args: object, "
                                                   "session: string|null}", item.request_id))
            return
        if self.session is not None and sid == self.session.id:
            self._last_activity = self._timer()
        if not self._admit(sid):
            self._send(MsgType.ERROR, item.request_id,
                       {"error": "rate_limited", "message": f"more than {self.unauth_per_minute} "
                        "unauthenticated requests a minute; wait"})
            return
        sent: list[bytes] = []

        def stream(payload: dict) -> None:
            sent.append(self._send(MsgType.STREAM, item.request_id, payload))
        try:
            result = self._dispatch(cmd, args, sid, stream)
            sent.append(self._send(MsgType.RESPONSE, item.request_id, result))
        except CommandError as exc:
            sent.append(self._send(MsgType.ERROR, item.request_id,
                                   {**exc.data, "error": exc.code, "message": str(exc)}))
        self._last = (item.request_id, p, sent[-1:])

    def _admit(self, sid: str | None) -> bool:
        """Anything not from an authenticated session (hello, info, refusals) is limited
        to ``unauth_per_minute``: each is audited, and a stranger at the USB port must
        not be able to fill the audit log. What is turned away is counted and audited
        once a minute."""
        s = self._session_for(sid)
        if s is not None and s.technician is not None:
            return True
        now = self._timer()
        while self._unauth and now - self._unauth[0] > 60.0:
            self._unauth.popleft()
        if len(self._unauth) < self.unauth_per_minute:
            self._unauth.append(now)
            return True
        self._limited += 1
        if self._limited_audited_at is None or now - self._limited_audited_at > 60.0:
            self._audit("console_rate_limited", refused=self._limited,
                        limit_per_minute=self.unauth_per_minute)
            self._limited_audited_at, self._limited = now, 0
        return False

    # ------------------------------------------------------------------ sessions
    def _audit(self, event_name: str, **data: Any) -> None:
        try:
            self.device.audit(event_name, **data)
        except Exception:  # reported; the command's answer still goes out
            log.exception("console audit record %s could not be written", event_name)

    def _session_for(self, sid: str | None) -> Session | None:
        s = self.session
        return s if s is not None and sid is not None and secrets.compare_digest(sid, s.id) else None

    def _close_session(self, reason: str) -> None:
        s = self.session
        if s is None:
            return
        self.session = None
        flash = None
        if s.flash is not None:
            flash = {"sha256": s.flash.sha256, "received": s.flash.received, "size": s.flash.size}
            self._audit("console_flash", session=s.id, phase="interrupted", **flash)
        self._audit("console_session_close", session=s.id, reason=reason, commands=s.commands,
                    frames_rejected=s.frames_rejected,
                    technician=s.technician.fingerprint if s.technician else None)
        event(log, "console session closed", session=s.id, reason=reason)

    def _dispatch(self, cmd: str, args: dict, sid: str | None, stream) -> dict:
        if cmd == "hello":
            self._close_session("superseded")
            s = Session(id=secrets.token_hex(16), nonce=secrets.token_hex(32), opened_at=self._timer())
            self.session = s
            self._last_activity = self._timer()
            self.stats["sessions"] += 1
            self._audit("console_session_open", session=s.id, port=self.port)
            event(log, "console session opened", session=s.id)
            return {"device_id": self.device.device_id(), "session": s.id, "nonce": s.nonce,
                    "protocol": PROTOCOL, "auth": "ed25519"}
        session = self._session_for(sid)
        if cmd == "auth":
            return self._auth(session, args)
        if cmd == "bye":
            if session is None:
                raise CommandError("no_session", "no open session with this id")
            self._close_session("bye")
            return {"closed": True}
        spec = COMMANDS.get(cmd)
        if spec is None:
            self._audit("console_command", session=sid, cmd=cmd[:40], ok=False, error="unknown_command")
            raise CommandError("unknown_command", f"unknown command {cmd[:40]!r} (known: hello, auth, "
                                                  f"bye, {', '.join(COMMANDS)})")
        tech = session.technician if session else None
        audit = cmd not in UNAUDITED
        base = {"session": session.id if session else None, "cmd": cmd,
                "technician": tech.fingerprint if tech else None}
        if spec.needs_auth and tech is None:
            self._audit("console_command", **base, ok=False, error="auth_required")
            raise CommandError("auth_required", f"{cmd} needs an authenticated session "
                                                "(hello, then auth with a technician key)")
        if session is not None:
            session.commands += 1
        self.stats["commands"] += 1
        try:
            details = spec.audit_args(args)
        except Exception:  # noqa: BLE001
            details = {}
        call = Call(cmd, args, session, stream)
        try:
            result = getattr(self.device, spec.fn)(call)
        except CommandError as exc:
            if audit:
                self._audit("console_command", **base, ok=False, error=exc.code,
                            message=str(exc)[:300], **details)
            if cmd.startswith("flash_") and exc.code in ("flash_hash", "install_failed", "install_unavailable"):
                self._audit("console_flash", session=base["session"], phase="failed", error=exc.code,
                            message=str(exc)[:300])
            raise
        except Exception as exc:  # a bug answers "internal"; the console lives on
            log.exception("console command %s failed", cmd)
            if audit:
                self._audit("console_command", **base, ok=False, error="internal", message=str(exc)[:300])
            raise CommandError("internal", f"{type(exc).__name__}: {exc}") from None
        if audit:
            extra = {}
            if cmd == "flash_begin":
                extra = {"resume_from": result.get("offset")}
            elif cmd == "flash_commit":
                extra = {"installed": result.get("installed")}
            self._audit("console_command", **base, ok=True, **details, **extra)
        return result

    def _auth(self, session: Session | None, args: dict) -> dict:
        if session is None:
            raise CommandError("no_session", "send hello first: auth answers its nonce")
        if session.technician is not None:
            raise CommandError("bad_request", "this session is authenticated already")
        pub_hex, sig_b64 = args.get("public_key"), args.get("signature")
        reason, key = None, None
        try:
            pub = bytes.fromhex(pub_hex) if isinstance(pub_hex, str) else b""
            sig = base64.b64decode(sig_b64, validate=True) if isinstance(sig_b64, str) else b""
        except (ValueError, binascii.Error):
            pub, sig = b"", b""
        if len(pub) != 32 or len(sig) != 64:
            reason = "malformed"
        else:
            try:
                allowed = self.device.technician_keys()
            except Exception as exc:  # noqa: BLE001 — a damaged list lets nobody in
                allowed = []
                log.error("technician keys unreadable: %s", exc)
            key = next((k for k in allowed if secrets.compare_digest(k.public_key, pub)), None)
            if key is None:
                reason = "unknown_key"
            elif not key.verifies(sig, auth_message(self.device.device_id(), session.id,
                                                    session.nonce, pub.hex())):
                reason = "bad_signature"
        if reason is not None:
            session.auth_failures += 1
            self._audit("console_auth", session=session.id, ok=False, reason=reason,
                        key=hashlib.sha256(pub).hexdigest() if len(pub) == 32 else None,
                        failures=session.auth_failures)
            event(log, "console auth failed", level=logging.WARNING, session=session.id, reason=reason)
            if self.auth_failure_delay_s:
                self._stop.wait(self.auth_failure_delay_s)  # slows guessing; the cable is physical
            if session.auth_failures >= MAX_AUTH_FAILURES:
                self._close_session("too_many_auth_failures")
            raise CommandError("auth_failed", f"authentication failed: {reason}")
        session.technician = key
        session.nonce = ""  # used: a session authenticates once
        self._audit("console_auth", session=session.id, ok=True, technician=key.name, key=key.fingerprint)
        event(log, "console auth", session=session.id, technician=key.name)
        return {"authenticated": True, "technician": key.name}


# ----------------------------------------------------------------------- the service
class ConsoleService:
    """The console as ``bwv run`` / ``bwv sim`` runs it: the server thread, and on the
    simulator the pty cable whose technician end is :attr:`client_port`."""

    def __init__(self, server: ConsoleServer, link=None) -> None:
        self.server = server
        self.link = link
        self.client_port = link.client_link if link is not None else server.port

    def close(self) -> None:
        self.server.stop()
        if self.link is not None:
            self.link.close()


def start_console(cfg, agent, *, sim_link_dir: Path | None = None,
                  installer: Installer | None = None, **server_kw) -> ConsoleService | None:
    """Start the console for a running agent (threaded store worker) if configured.

    ``sim_link_dir``: the simulator's cable — a pty pair whose technician end is linked
    at ``<sim_link_dir>/console`` — instead of ``console.port``."""
    c = cfg.console
    if not c.enabled:
        return None
    if not agent._worker.threaded:
        raise RuntimeError("the console needs the agent's threaded store worker")
    link = None
    port = c.port
    if sim_link_dir is not None:
        from hw_sim.console_pty import (
            PtyLink,  # the simulator's cable; never on a device
        )
        link = PtyLink(link_dir=sim_link_dir)
        port = link.device_path
    kw = {"baud": c.baud, "session_timeout_s": c.session_timeout_s, **server_kw}
    server = ConsoleServer(port, AgentDevice(agent, installer=installer), **kw)
    server.start()
    service = ConsoleService(server, link)
    event(log, "console started", port=port, technician_port=service.client_port)
    return service


def sim_console(cfg, workdir: Path):
    """``bwv sim --console-pty``: an ``on_start`` hook for ``hw_sim.runner.run`` that serves
    the console on a pty cable (even if ``console.enabled`` is false) and tells where
    the technician's end is."""
    import sys

    def on_start(rig):
        service = start_console(cfg.with_overrides(console__enabled=True), rig.agent,
                                sim_link_dir=Path(workdir))
        print(f"bwv: technician console: bwv console --port {service.client_port} info",
              file=sys.stderr, flush=True)
        return service.close
    return on_start
