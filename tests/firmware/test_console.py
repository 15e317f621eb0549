"""The technician console over real ptys, pyserial on both ends, against a running agent.

The camera is the production agent on hw_sim (threaded store worker, as on the Pi), its
virtual time paced to real time by a background thread; the cable is a pair of ptys
(hw_sim/console_pty.py). Every test looks at what the device *did* (the audit log, the
officer setting, the staged bundle), not only at what it answered.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import zlib
from pathlib import Path

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer.audit import read_events, verify_audit
from drivers.clock import ClockState
from drivers.keystore import FileKeyStore
from firmware import provision as prov
from firmware.cli import main as bwv
from firmware.console_client import ConsoleClient, ConsoleError
from firmware.console_frame import (
    HEADER,
    MAX_ENCODED,
    Frame,
    FrameError,
    FrameReader,
    MsgType,
    cobs_decode,
    cobs_encode,
    decode,
    encode,
)
from firmware.console_server import start_console
from hw_sim.runner import Rig, write_agency_identity
from tests.conftest import small_config
from tests.firmware.test_agent import double_press, hold


class Live:
    """A running camera with its console; ``paused()`` stops the clock thread so a test
    can press buttons on virtual time, deterministically."""

    def __init__(self, tmp_path: Path, installer: str = "fake", gps: bool = True, **server_kw) -> None:
        self.tmp = tmp_path
        self.tech = prov.write_technician_keypair(tmp_path / "tech", "alice")
        self.stranger = prov.write_technician_keypair(tmp_path / "stranger", "mallory")
        self.rig = Rig(small_config(), tmp_path / "w", threaded=True, gps=gps).start()
        FileKeyStore(tmp_path / "w" / "keys").set_technician_keys(
            [prov.load_technician_key(Path(self.tech["public_key"]))])
        self.installed: list[tuple[Path, bytes]] = []
        self._stop = threading.Event()
        self._run = threading.Event()
        self._run.set()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        kw = {"auth_failure_delay_s": 0, **server_kw}
        self.service = start_console(self.rig.agent.cfg, self.rig.agent, sim_link_dir=tmp_path / "w",
                                     installer=self._install if installer == "fake" else None, **kw)
        self.port = self.service.client_port

    def _install(self, path: Path) -> dict:
        self.installed.append((path, path.read_bytes()))
        return {"slot": "b", "version": "9.9.9"}

    def _tick(self) -> None:
        while not self._stop.is_set():
            if not self._run.is_set():
                self._idle.set()
                self._run.wait(0.05)
                continue
            self._idle.clear()
            self.rig.advance(0.01)
            time.sleep(0.008)  # about real time, leaving the CPU to the console threads

    def pause(self) -> None:
        self._run.clear()
        assert self._idle.wait(10)

    def resume(self) -> None:
        self._run.set()

    def key(self, who: str = "tech"):
        return prov.load_technician_private(Path(getattr(self, who)["private_key"]))

    def client(self, auth: bool = False) -> ConsoleClient:
        c = ConsoleClient(self.port, timeout_s=5.0)
        if auth:
            c.authenticate(self.key())
        return c

    def events(self, name: str | None = None) -> list[dict]:
        evs = read_events(self.rig.result.store_dir / "audit.log")
        return [e for e in evs if name is None or e["event"] == name]

    def close(self) -> None:
        self.service.close()
        self._stop.set()
        self._run.set()
        self._thread.join(10)
        self.rig.close()


@pytest.fixture
def live(tmp_path):
    lv = Live(tmp_path)
    try:
        yield lv
    finally:
        lv.close()


def raw_port(live: Live) -> serial.Serial:
    return serial.Serial(live.port, 115200, timeout=0.05)


def read_frames(port: serial.Serial, want: int, timeout_s: float = 5.0) -> list[Frame | FrameError]:
    reader, out = FrameReader(time.monotonic), []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        out += list(reader.feed(port.read(4096)))
    return out


# ----------------------------------------------------------------------- framing
def test_cobs_matches_the_published_examples():
    vectors = {b"\x00": b"\x01\x01", b"\x00\x00": b"\x01\x01\x01", b"\x11\x22\x00\x33": b"\x03\x11\x22\x02\x33",
               b"\x11\x22\x33\x44": b"\x05\x11\x22\x33\x44", bytes(range(1, 255)): b"\xff" + bytes(range(1, 255)),
               bytes(range(255)): b"\x01\xff" + bytes(range(1, 255)),
               bytes(range(2, 256)) + b"\x00": b"\xff" + bytes(range(2, 256)) + b"\x01\x01"}
    for raw, enc in vectors.items():
        assert cobs_encode(raw) == enc and cobs_decode(enc) == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_cobs_round_trips_and_never_emits_a_zero(data):
    enc = cobs_encode(data)
    assert 0 not in enc and cobs_decode(enc) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_decode_into_a_frame(data):
    """Whatever the line delivers, the reader answers with rejections, never raises, and
    anything it accepts is exactly a well-formed frame."""
    reader = FrameReader(time.monotonic)
    for item in reader.feed(data + b"\x00"):
        if isinstance(item, Frame):  # only a delimited piece with a valid CRC can be one
            assert any(decode(part) == item for part in data.split(b"\x00"))
        else:
            assert item.reason in ("bad_cobs", "truncated", "too_long", "bad_length", "bad_crc",
                                   "bad_version", "bad_type", "bad_json")


def test_each_kind_of_damage_is_named():
    good = encode(MsgType.REQUEST, 42, {"cmd": "info"})[:-1]
    raw = cobs_decode(good)
    assert decode(good) == Frame(MsgType.REQUEST, 42, {"cmd": "info"})
    flipped = bytearray(raw)
    flipped[-1] ^= 0x40
    assert decode(cobs_encode(bytes(flipped))).reason == "bad_crc"
    assert decode(cobs_encode(raw[:-3])).reason == "truncated"
    assert decode(good[:-3]).reason == "truncated"  # cut inside the COBS encoding
    assert decode(cobs_encode(raw + b"\x01")).reason == "bad_length"
    assert decode(cobs_encode(raw[:6] + (10**6).to_bytes(4, "big") + raw[10:])).reason == "too_long"
    bad_json = HEADER.pack(1, 1, 7, 8) + b"{no json"
    assert decode(cobs_encode(bad_json + zlib.crc32(bad_json).to_bytes(4, "big"))).reason == "bad_json"
    v2 = HEADER.pack(2, 1, 7, 2) + b"{}"
    err = decode(cobs_encode(v2 + zlib.crc32(v2).to_bytes(4, "big")))
    assert err.reason == "bad_version" and err.request_id == 7
    reader = FrameReader(time.monotonic)
    out = list(reader.feed(b"\x01" * (MAX_ENCODED + 10) + b"\x00" + good + b"\x00"))
    assert [getattr(o, "reason", "frame") for o in out] == ["too_long", "frame"]


def test_a_frame_cut_off_without_a_delimiter_times_out_as_truncated():
    now = [0.0]
    reader = FrameReader(lambda: now[0], frame_timeout_s=2.0)
    assert list(reader.feed(encode(MsgType.REQUEST, 1, {"cmd": "info"})[:-5])) == []
    now[0] = 1.0
    assert reader.expire() is None
    now[0] = 3.5
    assert reader.expire().reason == "truncated" and reader.pending == 0


# -------------------------------------------------------------------------- auth
def test_info_works_without_auth_and_nothing_else_does(live):
    with live.client() as c:
        info = c.info()
        assert info["device_id"] == "BWV-SIM-0001" and info["authenticated"] is False
        assert info["firmware"]["slot"] in ("a", "b", "unknown") and info["firmware"]["version"]
        assert info["storage"]["unsynced_clips"] == 0 and info["storage"]["budget_bytes"] > 0
        assert 99 < info["battery"]["percent"] <= 100 and info["clock"]["synced"] is True
        for cmd, args in (("selftest", {}), ("log", {}), ("assign", {"officer_id": "PC-1"}),
                          ("flash_begin", {"sha256": "0" * 64, "size": 10}),
                          ("provision", {"device_id": "X"})):
            with pytest.raises(ConsoleError) as exc:
                c.request(cmd, args)
            assert exc.value.code == "auth_required", cmd
        c.hello()  # a session, but not authenticated
        with pytest.raises(ConsoleError, match="auth_required"):
            c.assign("PC-1")
        assert c.info()["authenticated"] is False
        with pytest.raises(ConsoleError, match="unknown_command"):
            c.request("delete_clip", {"clip": "x"})
    assert live.rig.agent.officer_id == "UNASSIGNED"
    refused = [e["data"] for e in live.events("console_command") if not e["data"]["ok"]]
    assert {r["cmd"] for r in refused if r["error"] == "auth_required"} >= {
        "selftest", "log", "assign", "flash_begin", "provision"}


def test_auth_failures_unknown_key_bad_signature_replay_then_success(live):
    with live.client() as c:
        c.hello()
        pub, _ = c.sign_challenge(live.key())
        # An unknown key with a perfectly good signature of its own.
        spub, ssig = c.sign_challenge(live.key("stranger"))
        with pytest.raises(ConsoleError, match="auth_failed.*unknown_key"):
            c.request("auth", {"public_key": spub, "signature": ssig})
        # The listed key, a signature over something else.
        wrong = base64.b64encode(live.key().sign(b"not the challenge")).decode()
        with pytest.raises(ConsoleError, match="auth_failed.*bad_signature"):
            c.request("auth", {"public_key": pub, "signature": wrong})
        # A good signature from this session, replayed in the next session.
        _, good_sig = c.sign_challenge(live.key())
        first_session = c.session
        c.hello()
        assert c.session != first_session
        with pytest.raises(ConsoleError, match="auth_failed.*bad_signature"):
            c.request("auth", {"public_key": pub, "signature": good_sig})
        with pytest.raises(ConsoleError, match="auth_required"):
            c.selftest()
        assert c.authenticate(live.key()) == {"authenticated": True, "technician": "alice"}
        with pytest.raises(ConsoleError, match="already"):
            c.authenticate(live.key())
        assert c.info()["authenticated"] is True
    auths = [e["data"] for e in live.events("console_auth")]
    assert [(a["ok"], a.get("reason")) for a in auths] == [
        (False, "unknown_key"), (False, "bad_signature"), (False, "bad_signature"), (True, None)]
    assert auths[-1]["key"] == live.tech["fingerprint"]
    closes = [e["data"] for e in live.events("console_session_close")]
    assert closes[0]["session"] == first_session and closes[0]["reason"] == "superseded"


def test_unauthenticated_requests_are_rate_limited_and_audited_once(tmp_path):
    lv = Live(tmp_path, unauth_per_minute=5)
    try:
        with lv.client() as c:
            for _ in range(5):
                c.info()
            for _ in range(3):
                with pytest.raises(ConsoleError, match="rate_limited"):
                    c.info()
            c.retries = 0
            with pytest.raises(ConsoleError, match="rate_limited"):
                c.hello()
        # A technician arriving now waits too: hello comes before any authentication.
        with lv.client() as c2, pytest.raises(ConsoleError, match="rate_limited"):
            c2.authenticate(lv.key())
    finally:
        lv.close()
    assert len(lv.events("console_command")) == 5
    limited = lv.events("console_rate_limited")
    assert len(limited) == 1 and limited[0]["data"]["refused"] == 1


def test_three_failed_auths_end_the_session(live):
    with live.client() as c:
        c.hello()
        spub, ssig = c.sign_challenge(live.key("stranger"))
        for _ in range(3):
            with pytest.raises(ConsoleError, match="auth_failed"):
                c.request("auth", {"public_key": spub, "signature": ssig})
        with pytest.raises(ConsoleError, match="no_session"):
            c.request("auth", {"public_key": spub, "signature": ssig})
    assert live.events("console_session_close")[-1]["data"]["reason"] == "too_many_auth_failures"


# ---------------------------------------------------------------------- commands
def test_selftest_assign_log_and_the_audit_trail(live):
    with live.client(auth=True) as c:
        r = c.selftest()
        assert r["ok"], r
        names = set(r["checks"])
        assert names == {"output_green", "output_red", "output_haptic", "output_buzzer",
                         "button_record", "button_function", "camera", "gps", "store_writable",
                         "keys", "clock"}
        assert "key frame" in r["checks"]["camera"]["reason"]
        assert "NMEA" in r["checks"]["gps"]["reason"]
        assert c.assign("PC-4711") == {"officer_id": "PC-4711"}
        lines: list[str] = []
        n = c.log(on_line=lines.append)
        assert n == len(lines) > 5
        tail: list[str] = []
        assert c.log(tail=3, on_line=tail.append) == 3
        assert tail[:2] == lines[-2:]  # then the record of the first log command itself
        assert json.loads(tail[2].rsplit("\t", 1)[0])["data"]["cmd"] == "log"
        c.bye()
    assert live.rig.agent.officer_id == "PC-4711"
    # The streamed lines are the signed log itself: they verify with the device record.
    copy = live.tmp / "audit-copy.log"
    copy.write_text("\n".join(lines) + "\n")
    device = live.rig.keys.device()
    count, problems = verify_audit(copy, device.verifies, device.device_id)
    assert count == len(lines) and problems == []
    bodies = [json.loads(line.rsplit("\t", 1)[0]) for line in lines]
    assert {"console_session_open", "console_auth", "console_command"} <= {b["event"] for b in bodies}
    cmds = [(e["data"]["cmd"], e["data"]["ok"]) for e in live.events("console_command")]
    assert ("selftest", True) in cmds and ("assign", True) in cmds and ("log", True) in cmds
    assign = next(e for e in live.events("assignment"))
    assert assign["data"]["by"].startswith("console: alice")
    assert live.events("console_session_close")[-1]["data"]["reason"] == "bye"
    # The self-test put the outputs back: nothing is left switched on by it.
    assert not live.rig.gpio.level("red") and not live.rig.gpio.level("buzzer")


def test_log_streams_a_record_longer_than_a_frame(live):
    live.rig.agent.store_call(lambda s: s.audit.append("notice", kind="test", blob="x" * 200_000))
    with live.client(auth=True) as c:
        lines: list[str] = []
        assert c.log(on_line=lines.append) == len(lines) >= 4
    big = [line for line in lines if '"blob"' in line]
    assert len(big) == 1 and json.loads(big[0].rsplit("\t", 1)[0])["data"]["blob"] == "x" * 200_000
    raw = (live.rig.result.store_dir / "audit.log").read_text().splitlines()
    assert big[0] in raw  # byte for byte, signature included


def test_an_idle_session_times_out(tmp_path):
    lv = Live(tmp_path, session_timeout_s=2.0)
    try:
        with lv.client(auth=True) as c:
            time.sleep(3.0)
            with pytest.raises(ConsoleError, match="auth_required"):
                c.selftest()
    finally:
        lv.close()
    closes = [e["data"] for e in lv.events("console_session_close")]
    assert closes[0]["reason"] == "timeout"


def test_selftest_reports_a_silent_gps_with_its_reason(live):
    live.rig.gps_sim.disappear()  # the receiver's cable pulled
    with live.client(auth=True) as c:
        r = c.selftest()
    assert r["ok"] is False
    assert r["checks"]["gps"]["result"] == "fail" and "no NMEA" in r["checks"]["gps"]["reason"]
    assert r["checks"]["camera"]["result"] == "pass"


def test_selftest_reports_a_clock_not_set_and_skips_a_disabled_gps(tmp_path):
    lv = Live(tmp_path, gps=False)
    try:
        lv.rig.clock.set_state(ClockState(synced=False, source="none"))
        with lv.client(auth=True) as c:
            r = c.selftest()
    finally:
        lv.close()
    assert r["ok"] is False
    assert r["checks"]["clock"] == {"result": "fail", "reason": "clock not set (source none)"}
    assert r["checks"]["gps"] == {"result": "skip", "reason": "GPS disabled (gps.enabled = false)"}
    assert [n for n, chk in r["checks"].items() if chk["result"] == "fail"] == ["clock"]


def test_a_garbled_frame_is_rejected_and_never_executed(live):
    """An authenticated session's ``assign``, damaged on the line three ways: each is
    answered with a named error and the officer never changes."""
    with live.client(auth=True) as c:
        session = c.session
        frame = encode(MsgType.REQUEST, 77, {"cmd": "assign", "args": {"officer_id": "EVIL"},
                                             "session": session})
        raw = cobs_decode(frame[:-1])
        bad_crc = bytearray(raw)
        bad_crc[-2] ^= 0x01
        port = c.ser
        port.write(cobs_encode(bytes(bad_crc)) + b"\x00")
        port.write(frame[:-8] + b"\x00")  # truncated
        port.write(cobs_encode(raw[:-5]) + b"\x00")  # truncated before COBS
        errs = read_frames(port, 3)
        assert [(f.type, f.request_id, f.payload["error"]) for f in errs] == [
            (MsgType.ERROR, 0, "bad_crc"), (MsgType.ERROR, 0, "truncated"), (MsgType.ERROR, 0, "truncated")]
        # A frame cut off with nothing after it: dropped as truncated after the frame timeout.
        port.write(frame[:20])
        late = read_frames(port, 1, timeout_s=6.0)
        assert late[0].payload["error"] == "truncated"
        # The session still works, and the genuine frame runs exactly once.
        assert c.info()["officer_id"] == "UNASSIGNED"
        port.write(frame)
        ok = read_frames(port, 1)
        assert ok[0].type is MsgType.RESPONSE and ok[0].payload == {"officer_id": "EVIL"}
        port.write(frame)  # the same request again (a retry): answered, not run twice
        again = read_frames(port, 1)
        assert again[0].payload == {"officer_id": "EVIL"}
        c.bye()
    assigns = [e for e in live.events("console_command") if e["data"]["cmd"] == "assign"]
    assert len(assigns) == 1 and len(live.events("assignment")) == 1
    close = live.events("console_session_close")[-1]["data"]
    assert close["frames_rejected"] == 4


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(noise=st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=4))
def test_random_bytes_never_execute_anything_and_never_crash_the_server(live, noise):
    before = len(live.events())
    with raw_port(live) as port:
        for chunk in noise:
            port.write(chunk)
        port.write(b"\x00")
        time.sleep(0.05)
    with live.client() as c:  # still serving
        assert c.info()["device_id"] == "BWV-SIM-0001"
    assert live.service.server.running
    new = read_events(live.rig.result.store_dir / "audit.log")[before:]
    # The only command that ran is our own info; nothing opened a session or authenticated.
    assert [e["data"]["cmd"] for e in new if e["event"] == "console_command"] == ["info"]
    assert not [e for e in new if e["event"] in ("console_auth", "assignment")]
    assert live.rig.agent.officer_id == "UNASSIGNED"


# ------------------------------------------------------------------------- flash
def test_a_flash_cut_mid_transfer_resumes_where_it_stopped(live):
    bundle = live.tmp / "bwv-9.9.9.update.tar"
    data = os.urandom(300_000)
    bundle.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    first: list[tuple[int, int]] = []
    with live.client(auth=True) as c:
        r = c.flash(bundle, progress=lambda d, t: first.append((d, t)), chunk=16384, stop_after=100_000)
        assert r["stopped_at"] >= 100_000
    # The cable is pulled: no bye. The partial file waits beside the store.
    part = live.rig.result.store_dir.parent / "update-staging" / f"{sha}.part"
    assert part.stat().st_size == r["stopped_at"]
    assert part.read_bytes() == data[:r["stopped_at"]]
    progress: list[tuple[int, int]] = []
    with live.client(auth=True) as c:
        done = c.flash(bundle, progress=lambda d, t: progress.append((d, t)))
    assert progress[0] == (r["stopped_at"], len(data))  # resumed, not restarted
    assert progress[-1] == (len(data), len(data))
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert done == {"sha256": sha, "installed": {"slot": "b", "version": "9.9.9"}}
    assert len(live.installed) == 1 and live.installed[0][1] == data
    assert not part.exists()
    flashes = [e["data"] for e in live.events("console_flash")]
    assert flashes[0]["phase"] == "interrupted" and flashes[0]["received"] == r["stopped_at"]
    cmds = [e["data"] for e in live.events("console_command") if e["data"]["cmd"].startswith("flash")]
    assert [(d["cmd"], d.get("resume_from")) for d in cmds] == [
        ("flash_begin", 0), ("flash_begin", r["stopped_at"]), ("flash_commit", None)]
    assert cmds[-1]["installed"] == {"slot": "b", "version": "9.9.9"}
    assert not any(e["data"]["cmd"] == "flash_chunk" for e in live.events("console_command"))


def test_flash_refuses_bad_chunks_and_a_wrong_hash(live):
    data = os.urandom(5000)
    claimed = hashlib.sha256(b"something else").hexdigest()
    with live.client(auth=True) as c:
        assert c.request("flash_begin", {"sha256": claimed, "size": len(data), "name": "x"})["offset"] == 0
        chunk = {"sha256": claimed, "offset": 0, "crc32": zlib.crc32(data) ^ 1,
                 "data": base64.b64encode(data).decode()}
        with pytest.raises(ConsoleError, match="flash_crc"):
            c.request("flash_chunk", chunk)
        with pytest.raises(ConsoleError, match="flash_offset") as exc:
            c.request("flash_chunk", {**chunk, "offset": 100, "crc32": zlib.crc32(data)})
        assert exc.value.data["expected"] == 0
        with pytest.raises(ConsoleError, match="bad_args"):  # JSON Infinity: int() overflows
            c.request("flash_chunk", {**chunk, "offset": float("inf")})
        with pytest.raises(ConsoleError, match="flash_incomplete"):
            c.request("flash_commit", {"sha256": claimed})
        assert c.request("flash_chunk", {**chunk, "crc32": zlib.crc32(data)})["offset"] == len(data)
        with pytest.raises(ConsoleError, match="flash_hash"):
            c.request("flash_commit", {"sha256": claimed})
        with pytest.raises(ConsoleError, match="bad_args"):
            c.request("flash_begin", {"sha256": "../../etc/passwd", "size": 1})
    assert live.installed == []
    assert not (live.rig.result.store_dir.parent / "update-staging" / f"{claimed}.part").exists()
    assert live.events("console_flash")[-1]["data"]["error"] == "flash_hash"


def test_flash_through_the_real_installer_is_refused_by_name(tmp_path):
    """No injected installer: firmware.updating verifies the archive, refuses a file that
    is not a signed update with a named reason, and nothing is installed."""
    lv = Live(tmp_path, installer="real")
    try:
        junk = tmp_path / "junk.tar"
        junk.write_bytes(os.urandom(2000))
        with lv.client(auth=True) as c, pytest.raises(ConsoleError) as exc:
            c.flash(junk)
        assert exc.value.code == "install_failed" and "bad-archive" in str(exc.value)
        assert not list((lv.rig.result.store_dir.parent / "update-staging").glob("*.tar"))
    finally:
        lv.close()


# ---------------------------------------------------------------- provisioning
def test_console_provision_waits_for_the_sync_then_restarts_into_it(live):
    recipient = live.rig.keys.agency_recipient()
    pub = prov.load_technician_key(Path(live.tech["public_key"]))
    request = {"device_id": "CAM-0099", "recipient": recipient, "officer_id": "PC-7",
               "technicians": [{"name": pub.name, "public_key": pub.public_key.hex()}], "sync": {}}
    live.pause()
    double_press(live.rig)
    live.rig.advance(2.5)
    hold(live.rig, 3.3)
    live.rig.advance(1.5)
    live.resume()
    with live.client(auth=True) as c:
        assert c.info()["storage"]["unsynced_clips"] == 1
        with pytest.raises(ConsoleError) as exc:
            c.provision(request)
        assert exc.value.code == "unsynced_evidence" and "1 clip(s)" in str(exc.value)
        assert not prov.has_pending(live.rig.keys.directory)
        live.pause()
        live.rig.dock()
        live.rig.advance(0.5)
        live.resume()
        deadline = time.monotonic() + 30
        while c.info()["storage"]["unsynced_clips"] and time.monotonic() < deadline:
            time.sleep(0.1)
        r = c.provision(request)
    assert r["restart"] is True and r["device"]["device_id"] == "CAM-0099"
    assert live.rig.agent.shutdown_requested == "reprovision"
    assert prov.has_pending(live.rig.keys.directory)
    assert live.events("provisioning_refused")[0]["data"]["unsynced_clips"] == 1
    staged = live.events("provisioning_staged")[0]["data"]
    assert staged["new_public_key"] == r["device"]["public_key"] and staged["via"] == "console"
    old = live.rig.keys.device()
    live.close()  # the service stops ...
    keys, store = live.rig.keys.directory, live.rig.result.store_dir
    result = prov.apply_pending(keys, store, small_config(), live.rig.clock)  # ... and starts again
    assert result["device"] == r["device"]
    assert FileKeyStore(keys).device().device_id == "CAM-0099"
    retired = Path(result["retired_store"])
    rep = next(e for e in read_events(retired / "audit.log") if e["event"] == "reprovision")
    assert rep["data"]["new_public_key"] == r["device"]["public_key"]
    assert verify_audit(retired / "audit.log", old.verifies, old.device_id)[1] == []
    evs = read_events(store / "audit.log")
    assert [e["event"] for e in evs if e["event"] in ("provisioned", "assignment")] == \
        ["provisioned", "assignment"]
    live.close = lambda: None  # the fixture's teardown: already closed


# ------------------------------------------------------------- the CLI, end to end
def test_bwv_console_cli_against_bwv_sim(live, capsys):
    """``bwv console`` as a technician types it, against the running camera."""
    port, key = live.port, live.tech["private_key"]
    assert bwv(["console", "--port", port, "info"]) == 0
    assert json.loads(capsys.readouterr().out)["device_id"] == "BWV-SIM-0001"
    assert bwv(["console", "--port", port, "selftest"]) == 2
    assert "needs --key" in capsys.readouterr().err
    assert bwv(["console", "--port", port, "--key", live.stranger["private_key"], "selftest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bwv: error: console: auth_failed") and "unknown_key" in err and "\n" not in err
    os.chmod(key, 0o644)
    assert bwv(["console", "--port", port, "--key", key, "assign", "PC-1"]) == 2
    assert "LooseKeyPermissions" in capsys.readouterr().err
    os.chmod(key, 0o600)
    assert bwv(["console", "--port", port, "--key", key, "selftest"]) == 0
    out = capsys.readouterr().out
    assert "PASS camera:" in out and out.strip().endswith("selftest: OK")
    assert bwv(["console", "--port", port, "--key", key, "assign", "PC-2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"officer_id": "PC-2"}
    assert bwv(["console", "--port", port, "--key", key, "log", "--tail", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["device_id"] == "BWV-SIM-0001" for line in lines)
    bundle = live.tmp / "b.tar"
    bundle.write_bytes(os.urandom(70_000))
    assert bwv(["console", "--port", port, "--key", key, "flash", str(bundle)]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["installed"] == {"slot": "b", "version": "9.9.9"}
    assert "flashing (KiB)" in cap.err and "(100%)" in cap.err
    assert bwv(["console", "--port", str(live.tmp / "nope"), "info"]) == 2
    assert "console:" in capsys.readouterr().err


# ------------------------------------------------------------------- bwv run
SERVICE_CONFIG = """
[device]
platform = "sim"
keys_dir = "{keys}"
store_dir = "{store}"
[camera]
width = 320
height = 240
bitrate = 400000
segment_seconds = 1.0
[audio]
enabled = false
"""


def test_bwv_run_serves_the_console_and_restarts_into_a_console_provisioning(tmp_path, capsys):
    """The service as systemd runs it (sim platform, real time): its console answers on
    WORKDIR/console; a provisioning sent through it stops the service with the restart
    status and is applied, so the next start is the new device."""
    import signal
    import subprocess
    import sys
    work = tmp_path / "w"
    tech = prov.write_technician_keypair(tmp_path / "tech", "erin")
    recipient = write_agency_identity(tmp_path / "agency")
    cfg = tmp_path / "bwv.toml"
    cfg.write_text(SERVICE_CONFIG.format(keys=work / "keys", store=work / "store"))
    assert bwv(["provision", "--id", "CAM-0001", "--recipient", recipient, "--technician-key",
                tech["public_key"], "--config", str(cfg)]) == 0
    capsys.readouterr()
    proc = subprocess.Popen([sys.executable, "-m", "firmware.cli", "run", "--config", str(cfg),
                             "--workdir", str(work), "--max-seconds", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (work / "console").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        key = prov.load_technician_private(Path(tech["private_key"]))
        with ConsoleClient(str(work / "console"), timeout_s=10) as c:
            assert c.info()["device_id"] == "CAM-0001"
            c.authenticate(key)
            pub = prov.load_technician_key(Path(tech["public_key"]))
            r = c.provision({"device_id": "CAM-0002", "recipient": recipient,
                             "technicians": [{"name": pub.name, "public_key": pub.public_key.hex()}]})
        assert proc.wait(timeout=30) == 75, proc.stderr.read()  # EXIT_RESTART: systemd starts it again
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert FileKeyStore(work / "keys").device().to_json() == json.dumps(r["device"], sort_keys=True) + "\n"
    evs = read_events(work / "store" / "audit.log")
    assert evs[0]["device_id"] == "CAM-0002" and any(e["event"] == "provisioned" for e in evs)
    retired = [p for p in work.iterdir() if p.name.startswith("store.retired-")]
    assert len(retired) == 1
    old = read_events(retired[0] / "audit.log")
    assert [e["event"] for e in old if e["event"].startswith(("console_", "provision", "reprovision"))][-3:] \
        == ["console_command", "console_session_close", "reprovision"]


def test_bwv_sim_console_pty_serves_the_console_while_the_scenario_runs(tmp_path):
    import signal
    import subprocess
    import sys
    scenario = tmp_path / "idle.toml"
    scenario.write_text("end = 600.0\n")  # stopped by Ctrl-C below, whatever the machine's load
    cfg = tmp_path / "bwv.toml"
    cfg.write_text(SERVICE_CONFIG.format(keys=tmp_path / "unused-keys", store=tmp_path / "unused-store"))
    work = tmp_path / "sim"
    proc = subprocess.Popen([sys.executable, "-m", "firmware.cli", "sim", "--console-pty", "--speed", "1",
                             "--quiet", "--scenario", str(scenario), "--workdir", str(work),
                             "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONFAULTHANDLER="1"),  # stacks on SIGABRT
                            # Ctrl-C as a terminal delivers it: a runner started in the
                            # background (bash `&`) hands its children SIGINT ignored, and
                            # bwv sim rightly keeps an inherited SIG_IGN
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (work / "console").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        with ConsoleClient(str(work / "console")) as c:
            info = c.info()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            _, err = proc.communicate(timeout=30)
            pytest.fail("bwv sim did not stop within 60 s of SIGINT; its threads:\n" + err[-12000:])
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ctrl-C is a clean stop, reported the shell's way (128 + SIGINT) with the result
    assert proc.returncode == 130, err
    assert json.loads(out.splitlines()[-1])["stopped_by"] == "sigint"
    assert info["device_id"] == "BWV-SIM-0001" and info["platform"] == "sim"
    assert f"bwv console --port {work / 'console'} info" in err
    assert not (work / "console").exists()  # the cable is gone with the camera
    evs = read_events(work / "store" / "audit.log")
    assert [e["data"]["cmd"] for e in evs if e["event"] == "console_command"] == ["info"]
    assert evs[-1]["event"] == "store_close"  # the camera stopped cleanly after the console
    assert [e["data"]["reason"] for e in evs if e["event"] == "power_off"] == ["sigint"]
