"""``make firmware`` / ``bwv bundle``: build the agent's wheel and pack it into a bundle.

The wheel is built by pip with the project's own build backend (setuptools, declared in
pyproject.toml) and ``--no-build-isolation --no-index``, so it works offline once
``make setup`` has installed the backend into the venv. It is built from a private copy
of the source tree: a ``--version`` other than pyproject's is written into that copy
(the installed agent then reports the bundle's version, which the next update is
ordered against), and the work tree gets no ``build/`` or ``*.egg-info`` litter.
``SOURCE_DATE_EPOCH`` is set from the bundle's ``created_utc`` so wheel timestamps do
not depend on when it was built.

The bundle's payload: ``bwv-<version>-py3-none-any.whl`` and ``config/default.toml``
(every key at its default, from ``firmware.config.defaults_toml``). The agent's
third-party dependencies are pinned in the wheel's metadata but not shipped: they
come with the device image.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

from firmware import config as config_mod
from firmware.bundle import HARDWARE_IDS, BundleError, build_bundle, parse_version

SOURCE_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("firmware", "drivers", "capture", "buffer", "sync", "hw_sim")
_VERSION_LINE = re.compile(r'^version\s*=\s*"[^"]*"\s*$', re.MULTILINE)

Progress = Callable[[float, float], None]


class BuildError(Exception):
    """The bundle could not be built; the message names the step."""


def source_version(src: Path = SOURCE_ROOT) -> str:
    try:
        return tomllib.loads((src / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    except FileNotFoundError:
        raise BuildError(f"{src}: no pyproject.toml (bwv bundle runs from the source tree; "
                         "give --source)") from None
    except (KeyError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{src / 'pyproject.toml'}: no [project] version ({exc})") from None


def _copy_source(src: Path, dst: Path, version: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for pkg in PACKAGES:
        shutil.copytree(src / pkg, dst / pkg, ignore=ignore)
    for name in ("README.md", "LICENSE"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    text = (src / "pyproject.toml").read_text("utf-8")
    text, n = _VERSION_LINE.subn(f'version = "{version}"', text, count=1)
    if n != 1:
        raise BuildError(f"{src / 'pyproject.toml'}: no version line to set")
    (dst / "pyproject.toml").write_text(text, "utf-8")


def build_wheel(out_dir: Path, *, version: str, created_utc: str,
                src: Path = SOURCE_ROOT) -> Path:
    """``bwv-<version>-py3-none-any.whl`` in ``out_dir``, built offline by pip."""
    try:
        import setuptools
        major = int(setuptools.__version__.split(".")[0])
    except (ImportError, ValueError):
        major = 0
    if major < 77:
        raise BuildError("building the agent's wheel needs setuptools>=77 in this Python "
                         f"({sys.executable}); run make setup")
    epoch = int(_dt.datetime.strptime(created_utc, "%Y-%m-%dT%H:%M:%SZ")
                .replace(tzinfo=_dt.UTC).timestamp())
    with tempfile.TemporaryDirectory(prefix="bwv-wheel-") as tmp:
        work, wheels = Path(tmp) / "src", Path(tmp) / "wheels"
        work.mkdir()
        _copy_source(Path(src), work, version)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PIP_NO_INPUT": "1"}
        res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                              "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                              "--quiet", str(work), "-w", str(wheels)],
                             capture_output=True, text=True, env=env, cwd=tmp, check=False)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BuildError(f"pip wheel failed ({res.returncode}): {tail[0]}")
        built = sorted(wheels.glob(f"bwv-{version}-*.whl"))
        if len(built) != 1:
            raise BuildError(f"pip wheel made {[p.name for p in wheels.iterdir()]}, expected "
                             f"one bwv-{version} wheel")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        final = Path(out_dir) / built[0].name
        shutil.copy2(built[0], final)
    return final


def now_utc(clock_ns: int) -> str:
    """``created_utc``: SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    secs = int(sde) if sde and sde.isdigit() else clock_ns // 10**9
    return _dt.datetime.fromtimestamp(secs, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_firmware(out_dir: Path, *, created_utc: str, version: str | None = None,
                  hardware: list[str] | None = None, min_version: str = "0",
                  src: Path = SOURCE_ROOT, progress: Progress | None = None) -> Path:
    """Wheel + default config → ``out_dir/bwv-firmware-<version>.tar``."""
    version = version or source_version(src)
    try:
        parse_version(version)
        parse_version(min_version)
    except BundleError as exc:
        raise BuildError(str(exc)) from None
    hardware = list(hardware or HARDWARE_IDS)
    steps = 3.0
    show = progress or (lambda done, total: None)
    show(0, steps)
    with tempfile.TemporaryDirectory(prefix="bwv-bundle-") as tmp:
        wheel = build_wheel(Path(tmp), version=version, created_utc=created_utc, src=src)
        show(1, steps)
        cfg = Path(tmp) / "default.toml"
        cfg.write_text(config_mod.defaults_toml(), "utf-8")
        show(2, steps)
        bundle = build_bundle(Path(out_dir), version=version, hardware=hardware,
                              min_version=min_version,
                              files={wheel.name: wheel, "config/default.toml": cfg},
                              created_utc=created_utc)
        show(3, steps)
    return bundle
