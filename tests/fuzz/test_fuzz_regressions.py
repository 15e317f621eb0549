"""Every kept fuzz crash input and every seed, replayed through its target's ``check``.

The same harness function atheris drives (``fuzz/targets/<target>.py``), without
atheris: an input in ``fuzz/regressions/<target>/`` once made a parser raise something
other than its named error (or break its promise); it must now pass. Seeds must pass
too, and the fixtures the evidence targets verify against must still be genuine.
"""
from __future__ import annotations

import pytest

from fuzz import harness

CASES = [(name, path) for name in harness.target_names() for path in harness.replay_files(name)]


@pytest.mark.parametrize("target,path", CASES,
                         ids=[f"{n}/{p.parent.parent.name}/{p.name}" for n, p in CASES])
def test_input_passes_its_target(target, path):
    harness.load(target).check(path.read_bytes())


def test_every_target_has_seeds_and_every_regression_a_target():
    for name in harness.target_names():
        assert any((harness.CORPUS / name).iterdir()), f"no seed corpus for {name}"
    for d in harness.REGRESSIONS.iterdir():
        assert d.name in harness.REGISTRY, f"fuzz/regressions/{d.name} belongs to no target"


def test_kept_crashes_cover_the_defects_found():
    """One regression input per defect fixed in issue #7 (see docs/RELIABILITY.md)."""
    kept = {p.parent.name for p in harness.REGRESSIONS.rglob("*") if p.is_file()}
    assert {"segment", "manifest", "audit", "device_record", "store_marker", "config",
            "assignment", "dock_sidecar"} <= kept
    assert "bundle" in kept or not harness.available("bundle")


def test_fixture_clip_is_genuine():
    """The backdrop clip is real evidence: it verifies with the fixture device's key."""
    from buffer.verify import verify_clip
    from drivers.keystore import DeviceRecord
    device = DeviceRecord.from_json((harness.FIXTURES / "device.json").read_text())
    (clip,) = (harness.FIXTURES / "clips").iterdir()
    report = verify_clip(clip, device)
    assert report.ok, report.all_failures()
    assert len(report.segments) >= 2


def test_a_defect_escaping_check_is_not_swallowed():
    """The rule the runner applies: anything but the named error escapes ``check``."""
    from fuzz.targets import config, manifest
    with pytest.raises(harness.Defect):
        harness.named(ValueError(""))
    config.check(b"[camera]\nfps = 0\n")  # a ConfigError with a message: allowed
    manifest.check(b"BWVCLP1\n\x00\x00\x00\x02{}" + b"\0" * 64)  # ManifestInvalid in the report
