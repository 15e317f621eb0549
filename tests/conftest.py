"""Shared fixtures: small simulated shifts, recorded once per session and copied per test.

Recording through the real agent on hw_sim (not hand-built files) means every buffer
test runs against exactly what the camera writes.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from firmware.config import validate
from hw_sim import runner

@pytest.fixture(autouse=True)
def _bwv_logger_restored():
    """A CLI call inside a test (``bwv(...)``) points the ``bwv`` logger at that test's
    captured stderr, which pytest closes afterwards; a later test's camera thread then
    logged into a closed stream (or another test's output). Each test starts with the
    logger as it found it."""
    root = logging.getLogger("bwv")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved


SMALL = {"camera": {"width": 320, "height": 240, "segment_seconds": 1.0, "bitrate": 400_000},
         "buffer": {"pre_record_seconds": 3}}


def small_config(**overrides):
    raw = {k: dict(v) for k, v in SMALL.items()}
    for dotted, value in overrides.items():
        section, key = dotted.split("__", 1)
        raw.setdefault(section, {})[key] = value
    return validate(raw, "<tests>")


def two_clip_scenario() -> runner.Scenario:
    steps = (runner.double_press(5.0) + runner.hold(8.0, 3.3)
             + runner.double_press(15.0) + runner.hold(18.0, 3.3))
    return runner.Scenario(sorted(steps, key=lambda s: s.at_s), end_s=24.0, name="two-clips")


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> runner.SimResult:
    """A store with two closed clips and a ring, recorded by the real agent."""
    work = tmp_path_factory.mktemp("recorded")
    return runner.run(small_config(), work, two_clip_scenario())


@pytest.fixture(scope="session")
def other_device(tmp_path_factory) -> runner.SimResult:
    """A second camera (its own key and id), for cross-device replay tests."""
    work = tmp_path_factory.mktemp("other")
    sc = runner.Scenario(runner.double_press(4.0) + runner.hold(6.0, 3.3), end_s=11.0)
    return runner.run(small_config(), work, sc, device_id="BWV-SIM-0002")


@pytest.fixture
def store_copy(recorded, tmp_path) -> Path:
    """A private copy of the recorded workdir (store, keys, agency) to damage freely."""
    dst = tmp_path / "work"
    shutil.copytree(recorded.store_dir.parent, dst)
    return dst
