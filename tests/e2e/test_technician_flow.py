"""A technician's bench session, end to end, with the real pieces and nothing injected.

Back office: ``bwv release init``, ``bwv release add`` of a bundle holding a real bwv
wheel at 0.2.0 (packed from this source tree by tests/firmware/update_helpers.py, which
takes a fraction of a second where ``pip wheel`` takes many), ``bwv release archive``.

Device: ``bwv keys technician`` / ``bwv keys agency``, then ``bwv provision`` with the
technician's public key and the repository's root pinned as ``KEYS/update-root.json``;
a factory slot holding 0.1.0 (the real slot installer; its audit records wait in
``boot.json`` for the first start); then ``bwv run`` on the sim platform in its own
process, the service as systemd runs it, with its console on a pty cable at
``WORKDIR/console``. ``install_offline_archive`` asks of a console flash that the camera
is not recording and its battery is at least ``update.min_battery_percent`` (50 %), not
that it is docked: the camera buffers, on a full simulated battery.

Technician: ``bwv console --port WORKDIR/console --key technician.key flash ARCHIVE`` in
its own process, as on the technician's laptop. The device checks the archive with TUF
against the pinned root, installs 0.2.0 into the inactive slot on trial and restarts
(exit 75); the next ``bwv run`` counts the start, runs the health check and commits.
The negative twin flashes the same bundle published by a repository with other keys:
refused as ``bad-signature``, audited, and the slots are untouched.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buffer.audit import read_events, verify_audit
from drivers.clock import SystemClock
from drivers.keystore import FileKeyStore
from firmware.bundle import read_manifest
from firmware.cli import main as bwv_main
from firmware.main import EXIT_OK, EXIT_RESTART
from firmware.slots import Slots
from tests.firmware.update_helpers import make_bundle, make_wheel

ROOT = Path(__file__).resolve().parents[2]
BWV = [sys.executable, "-m", "firmware.cli"]
DEVICE_ID = "CAM-0042"

CONFIG = """
[device]
platform = "sim"
keys_dir = "{work}/keys"
store_dir = "{work}/store"
[camera]
width = 320
height = 240
bitrate = 400000
segment_seconds = 1.0
[audio]
enabled = false
[update]
slots_dir = "{slots}"
metadata_dir = "{metadata}"
"""


def bwv(*args) -> tuple[int, str, str]:
    """``bwv ARGS`` in this process (the back office's and the bench's quick commands);
    the ``bwv`` logger is put back as it was, since some commands set it up."""
    logger = logging.getLogger("bwv")
    saved = logger.handlers[:], logger.level, logger.propagate
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = bwv_main([str(a) for a in args])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    return rc, out.getvalue(), err.getvalue()


def ok(*args) -> dict:
    rc, out, err = bwv(*args)
    assert rc == 0, err
    return json.loads(out)


def technician(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``bwv console …`` in its own process: the technician's laptop."""
    return subprocess.run([*BWV, "console", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


# ------------------------------------------------------------------ the back office
def publish(d: Path, bundles: list[Path]) -> dict:
    """A release repository with ``bundles`` published, and its offline archive."""
    repo, keys = d / "repo", d / "release-keys"
    init = ok("release", "init", "--repo", repo, "--keys", keys)
    for b in bundles:
        added = ok("release", "add", b, "--repo", repo, "--keys", keys)
        assert added["version"] == read_manifest(b).version, added
    archive = ok("release", "archive", "--repo", repo, "--out", d / "bwv-update.tar")
    return {"root": Path(init["pinned_root"]), "archive": Path(archive["archive"]),
            "index": archive}


@pytest.fixture(scope="module")
def office(tmp_path_factory):
    d = tmp_path_factory.mktemp("office")
    factory = make_bundle(d / "b-0.1.0", "0.1.0", make_wheel(d / "w-0.1.0", "0.1.0"))[0]
    update = make_bundle(d / "b-0.2.0", "0.2.0", make_wheel(d / "w-0.2.0", "0.2.0"))[0]
    agency = publish(d / "agency", [update])
    # The same bundle, byte for byte, published by a repository with other keys: the
    # signatures are the only thing wrong with it.
    rogue = publish(d / "rogue", [update])
    assert agency["index"]["targets"] == rogue["index"]["targets"] == ["bwv-firmware-0.2.0.tar"]
    return {"factory": factory, "update": update, "agency": agency, "rogue": rogue}


# ------------------------------------------------------------------------ the camera
class Camera:
    """A provisioned camera on the sim platform; ``start`` runs ``bwv run`` as systemd does."""

    def __init__(self, tmp: Path, office: dict) -> None:
        self.tmp, self.work = tmp, tmp / "cam"
        self.slots_dir = tmp / "opt-bwv" / "firmware"
        self.cfg = tmp / "bwv.toml"
        self.cfg.write_text(CONFIG.format(work=self.work, slots=self.slots_dir,
                                          metadata=tmp / "var-lib-bwv" / "update" / "metadata"))
        self.tech = ok("keys", "technician", "--out", tmp / "tech", "--name", "alice")
        agency = ok("keys", "agency", "--out", tmp / "agency-identity")
        self.record = ok("provision", "--id", DEVICE_ID, "--recipient", agency["recipient"],
                         "--technician-key", self.tech["public_key"], "--officer", "PC-1234",
                         "--update-root", office["agency"]["root"], "--config", self.cfg)
        assert (self.work / "keys" / "update-root.json").read_bytes() == \
            office["agency"]["root"].read_bytes()
        # The factory image: 0.1.0, committed at once (nothing to fall back to).
        factory = Slots(self.slots_dir, clock=SystemClock())
        assert factory.install(office["factory"], read_manifest(office["factory"]))["trial"] is False
        self.port = self.work / "console"
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> subprocess.Popen:
        if self.port.exists():  # the previous run's cable is gone with it
            raise AssertionError(f"{self.port} left behind")
        self.runs += 1
        self.log = self.tmp / f"bwv-run-{self.runs}.log"  # a file: a full pipe would stall it
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([*BWV, "run", "--config", self.cfg, "--workdir", self.work,
                                          "--max-seconds", "120"], cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=log)
        self.wait_for(lambda: self.port.exists(), "the console")
        return self.proc

    def wait_for(self, cond, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"bwv run exited {self.proc.returncode} waiting for {what}: "
                                     f"{self.log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.05)

    def exit_status(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.exit_status()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def slots(self) -> Slots:
        return Slots(self.slots_dir, clock=SystemClock())

    def status(self) -> dict:
        """``bwv update --status --json --verify`` as a technician runs it on the device."""
        return ok("update", "--status", "--json", "--verify", "--config", self.cfg)

    def info(self) -> dict:
        r = technician("--port", self.port, "info", timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def audit(self) -> list[dict]:
        """The audit log, after checking its chain and every signature."""
        log = self.work / "store" / "audit.log"
        device = FileKeyStore(self.work / "keys").device()
        count, problems = verify_audit(log, device.verifies, DEVICE_ID)
        assert problems == [] and count > 0, problems
        return read_events(log)


@pytest.fixture
def camera(tmp_path, office):
    cam = Camera(tmp_path, office)
    try:
        yield cam
    finally:
        cam.kill()


def tree(d: Path) -> dict[str, str]:
    """Every file under ``d`` by SHA-256, symlinks by target: what "unchanged" means."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def first(events: list[dict], name: str, after: int = -1, **match) -> int:
    """Index of the first ``name`` record after ``after`` whose data has ``match``."""
    for i, e in enumerate(events):
        if i > after and e["event"] == name and all(e["data"].get(k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no {name} {match} after record {after}: "
                         f"{[e['event'] for e in events[after + 1:]]}")


PROGRESS = re.compile(r"^flashing \(KiB\): (\d+)/(\d+) \((\d+)%\)$", re.MULTILINE)


# ------------------------------------------------------------------------- the tests
def test_technician_flashes_a_signed_archive_over_the_console_and_it_commits(camera, office):
    archive = office["agency"]["archive"]
    # 1. The camera runs its factory firmware; the technician plugs in and looks.
    camera.start()
    info = camera.info()
    assert info["device_id"] == DEVICE_ID and info["firmware"] == {"version": "0.1.0", "slot": "a"}
    assert info["state"] == "buffering" and info["battery"]["percent"] >= 50

    # 2. The flash: transfer with progress, TUF verification, install on trial, restart.
    r = technician("--port", camera.port, "--key", camera.tech["private_key"], "flash", archive)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    installed = answer["installed"]
    assert installed == {**installed, "status": "installed", "slot": "b", "version": "0.2.0",
                         "previous_version": "0.1.0", "trial": True, "restart": True,
                         "target": "bwv-firmware-0.2.0.tar"}
    steps = [tuple(map(int, m)) for m in PROGRESS.findall(r.stderr)]
    size_kib = round(archive.stat().st_size / 1024)
    assert steps[0] == (0, size_kib, 0) and steps[-1] == (size_kib, size_kib, 100), r.stderr
    assert len(steps) >= 4 and [s[0] for s in steps] == sorted(s[0] for s in steps)
    assert "restarts into it on trial" in r.stderr
    assert camera.exit_status() == EXIT_RESTART  # systemd (Restart=on-failure) starts it again

    st = camera.status()
    assert (st["current"], st["active"], st["trying"], st["attempts"]) == ("b", "b", "b", 0)
    assert st["slots"]["b"]["state"] == "trying" and st["slots"]["b"]["version"] == "0.2.0"
    assert st["slots"]["b"]["verified"] and st["slots"]["a"]["verified"]
    assert st["slots"]["a"]["previous"] and st["slots"]["a"]["state"] == "good"
    assert st["last_result"]["result"] == "installed"
    assert list((camera.work / "update-staging").glob("*")) == []  # the received copy is gone

    # 3. The next start: counted, health-checked (a fresh interpreter imports slot b's
    #    code), committed; a committed slot just keeps running.
    camera.start()
    camera.wait_for(lambda: camera.slots().read_state()["trying"] is None, "the commit")
    info = camera.info()
    assert info["firmware"] == {"version": "0.2.0", "slot": "b"}
    assert camera.stop() == EXIT_OK

    st = camera.status()
    assert (st["current"], st["trying"], st["previous"]) == ("b", None, "a")
    assert st["slots"]["b"]["state"] == "good" and st["slots"]["b"]["committed_utc"]
    assert st["slots"]["b"]["verified"]
    assert st["last_result"] == {**st["last_result"], "result": "committed", "slot": "b",
                                 "version": "0.2.0", "attempts": 1}
    assert st["pending_audit"] == 0

    # 4. The audit log (chain and signatures verified) tells it in order.
    ev = camera.audit()
    i = first(ev, "provisioned", update_root_sha256=hashlib.sha256(
        office["agency"]["root"].read_bytes()).hexdigest())
    i = first(ev, "update_installed", i, slot="a", version="0.1.0", trial=False)
    auth = first(ev, "console_auth", i, ok=True, technician="alice")
    session = ev[auth]["data"]["session"]
    i = first(ev, "console_session_open", session=session)
    assert i < auth
    i = first(ev, "console_command", auth, session=session, cmd="flash_begin", ok=True)
    i = first(ev, "update_verified", i, version="0.2.0", target="bwv-firmware-0.2.0.tar")
    assert ev[i]["data"]["sha256"] == installed["sha256"]
    i = first(ev, "update_install_started", i, slot="b", version="0.2.0", running_version="0.1.0")
    i = first(ev, "update_installed", i, slot="b", version="0.2.0", trial=True, previous_version="0.1.0")
    i = first(ev, "console_command", i, session=session, cmd="flash_commit", ok=True)
    assert ev[i]["data"]["installed"]["slot"] == "b"
    i = first(ev, "console_session_close", i, session=session)
    i = first(ev, "update_trial_start", i, slot="b", version="0.2.0", attempt=1)
    i = first(ev, "update_committed", i, slot="b", version="0.2.0", attempts=1)
    assert not [e for e in ev if e["event"] in ("update_rejected", "update_install_failed",
                                                "update_health_check_failed", "fault")]


def test_an_archive_signed_by_other_keys_is_refused_and_nothing_changes(camera, office):
    camera.start()
    slots = camera.slots()
    camera.wait_for(lambda: slots.read_state()["pending_audit"] == [], "the factory records")
    before, boot_before = tree(slots.root), slots.boot_path.read_bytes()

    r = technician("--port", camera.port, "--key", camera.tech["private_key"], "flash",
                   office["rogue"]["archive"])
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()[-1]
    assert r.stderr.count("bwv: error") == 1
    assert err.startswith("bwv: error: console: install_failed") and "bad-signature" in err, r.stderr
    assert "(100%)" in r.stderr  # it all arrived; the signature is what was refused

    info = camera.info()  # still running its firmware: no restart was asked for
    assert info["firmware"] == {"version": "0.1.0", "slot": "a"} and camera.proc.poll() is None
    assert tree(slots.root) == before and slots.boot_path.read_bytes() == boot_before
    assert list((camera.work / "update-staging").glob("*")) == []
    downloads = camera.tmp / "var-lib-bwv" / "update" / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []
    assert camera.stop() == EXIT_OK

    ev = camera.audit()
    auth = first(ev, "console_auth", ok=True, technician="alice")
    session = ev[auth]["data"]["session"]
    i = first(ev, "console_command", auth, session=session, cmd="flash_begin", ok=True)
    i = first(ev, "update_rejected", i, reason="bad-signature")
    assert "UnsignedMetadataError" in ev[i]["data"]["message"]
    i = first(ev, "console_command", i, session=session, cmd="flash_commit", ok=False,
              error="install_failed")
    i = first(ev, "console_flash", i, session=session, phase="failed", error="install_failed")
    assert "bad-signature" in ev[i]["data"]["message"]
    first(ev, "console_session_close", i, session=session)
    assert [e["data"]["version"] for e in ev if e["event"] == "update_install_started"] == ["0.1.0"]
