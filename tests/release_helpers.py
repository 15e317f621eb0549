"""Helpers for the release and fetch tests: small fake bundles, a signed TUF repository,
a device clock.

A fake bundle has a tiny payload instead of the agent's wheel (the wheel is built once,
in tests/firmware/test_bundle.py, where it is what is under test). Everything else is
real: the bundle format, python-tuf's metadata and ngclient, Ed25519 signatures.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import tarfile
from pathlib import Path

from drivers.clock import ClockState
from firmware import release
from firmware.bundle import FORMAT, build_bundle
from hw_sim.clock import SimClock

#: Fixed "now" for the back office and the device: years away from the host's clock, so
#: a test passes only if the device's injected clock (not the host's) governs expiry.
NOW = dt.datetime(2031, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
CREATED = "2031-03-01T11:00:00Z"


def device_clock(now: dt.datetime = NOW, *, synced: bool = True) -> SimClock:
    state = ClockState(synced=synced, source="ntp" if synced else "none")
    return SimClock(utc_start_ns=int(now.timestamp()) * 10**9, state=state)


def fake_bundle(out: Path, version: str, *, hardware=("sim", "pi-4"), min_version: str = "0",
                payload: bytes | None = None) -> Path:
    src = out / f"src-{version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "agent.whl").write_bytes(payload or f"agent {version}\n".encode() * 50)
    (src / "default.toml").write_text("[log]\nlevel = \"info\"\n")
    return build_bundle(out, version=version, hardware=list(hardware), min_version=min_version,
                        files={f"bwv-{version}-py3-none-any.whl": src / "agent.whl",
                               "config/default.toml": src / "default.toml"},
                        created_utc=CREATED)


def make_repo(tmp: Path, *versions: str, hardware=("sim", "pi-4"), min_version: str = "0",
              now: dt.datetime = NOW) -> tuple[Path, Path]:
    """A repository with ``versions`` published in order; returns (repo, keys)."""
    repo, keys = tmp / "repo", tmp / "release-keys"
    release.init_repo(repo, keys, now=now)
    for v in versions:
        release.add_bundle(repo, keys, fake_bundle(tmp / "bundles", v, hardware=hardware,
                                                   min_version=min_version), now=now)
    return repo, keys


def pinned_root(repo: Path) -> Path:
    return repo / "metadata" / "1.root.json"


def tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (symlinks by target) for before/after comparisons."""
    if not d.exists():
        return {}
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = b"->" + str(p.readlink()).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def snapshot_repo(repo: Path, where: Path) -> Path:
    shutil.copytree(repo, where)
    return where


def raw_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            else:
                tar.addfile(ti)
    return path


def manifest_bytes(files: dict[str, bytes], *, version="0.2.0", hardware=("sim",),
                   min_version="0", **extra) -> bytes:
    import hashlib
    m = {"format": FORMAT, "version": version, "hardware": list(hardware),
         "min_version": min_version, "created_utc": CREATED,
         "payload": [{"path": p, "sha256": hashlib.sha256(d).hexdigest(), "length": len(d)}
                     for p, d in files.items()]}
    m.update(extra)
    return json.dumps(m).encode()


def reg(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = 0o644
    return ti
