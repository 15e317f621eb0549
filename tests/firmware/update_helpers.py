"""Real wheels and bundles for the update tests.

``make_wheel`` packs the project's own source tree (the packages pyproject.toml ships)
into a spec-conformant pure-Python wheel with a RECORD of SHA-256 hashes, at any version,
optionally with one module replaced — so a slot's health check imports real bwv code,
and a "broken" bundle is broken the way a bad release would be.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from firmware.bundle import build_bundle, read_manifest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("firmware", "drivers", "capture", "buffer", "sync", "hw_sim")
CREATED = "2026-01-15T12:00:00Z"
DEFAULT_TOML = '[device]\nplatform = "sim"\n\n[update]\nmax_boot_attempts = 3\n'


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_files(version: str, *, replace: dict[str, bytes] | None = None,
                packages: tuple[str, ...] = PACKAGES) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for pkg in packages:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            files[p.relative_to(ROOT).as_posix()] = p.read_bytes()
    for name, data in (replace or {}).items():
        files[name] = data
    di = f"bwv-{version}.dist-info"
    files[f"{di}/METADATA"] = f"Metadata-Version: 2.1\nName: bwv\nVersion: {version}\n".encode()
    files[f"{di}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: bwv-tests\nRoot-Is-Purelib: true\n"
                            b"Tag: py3-none-any\n")
    files[f"{di}/top_level.txt"] = ("\n".join(packages) + "\n").encode()
    return files


def write_wheel(out_dir: Path, version: str, files: dict[str, bytes], *,
                record_override: dict[str, str] | None = None, unlisted: dict[str, bytes] | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    di = f"bwv-{version}.dist-info"
    rows = [[name, f"sha256={_b64(data)}", str(len(data))] for name, data in files.items()]
    for name, h in (record_override or {}).items():
        rows = [[r[0], h if r[0] == name else r[1], r[2]] for r in rows]
    rows.append([f"{di}/RECORD", "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path = out_dir / f"bwv-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**files, **(unlisted or {})}.items():
            zf.writestr(name, data)
        zf.writestr(f"{di}/RECORD", buf.getvalue())
    return path


def make_wheel(out_dir: Path, version: str, **kw) -> Path:
    return write_wheel(Path(out_dir), version, wheel_files(version, **kw))


def make_bundle(out_dir: Path, version: str, wheel: Path, *, hardware=("sim",),
                min_version: str = "0.1.0", config: str | None = DEFAULT_TOML):
    """A bundle (tar) + its manifest; the manifest is what a TUF-verified fetch returns."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {f"wheels/{wheel.name}": wheel}
    if config is not None:
        cfg = out_dir / f"bwv-{version}.toml"
        cfg.write_text(config)
        files["config/bwv.toml"] = cfg
    bundle = build_bundle(out_dir, version=version, hardware=list(hardware),
                          min_version=min_version, files=files, created_utc=CREATED)
    return bundle, read_manifest(bundle)


class Verified:
    """What ``sync.firmware_fetch`` hands the installer: a path and the manifest."""

    def __init__(self, path: Path, manifest) -> None:
        self.path, self.manifest = path, manifest

    def audit_fields(self) -> dict:
        return {"target": self.path.name, "source": "test"}


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


BROKEN_AGENT = b'raise ImportError("bwv test: this release is broken on purpose")\n'


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """Bundles 0.1.0, 0.2.0, 0.3.0 and a 0.2.0 whose firmware.agent does not import."""
    d = tmp_path_factory.mktemp("bundles")
    out = {}
    for v in ("0.1.0", "0.2.0", "0.3.0"):
        out[v] = make_bundle(d / v, v, make_wheel(d / f"w{v}", v))
    out["broken"] = make_bundle(d / "broken", "0.2.0",
                                make_wheel(d / "wbroken", "0.2.0",
                                           replace={"firmware/agent.py": BROKEN_AGENT}))
    return out
