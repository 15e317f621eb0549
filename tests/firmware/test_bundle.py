"""The firmware bundle: build, strict reading, safe extraction, compatibility rules.

Hostile tars are built by hand (tarfile) so each check is met by exactly the input it
exists for; the real agent wheel is built once for this module.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.bundle import (
    FORMAT,
    HARDWARE_IDS,
    BundleError,
    BundleManifest,
    BundlePolicy,
    PayloadFile,
    build_bundle,
    check_compatible,
    compare_versions,
    extract_payload,
    hardware_id,
    parse_version,
    read_manifest,
)
from firmware.config import validate
from firmware.platform import PlatformInfo
from tests.release_helpers import (
    CREATED,
    fake_bundle,
    manifest_bytes,
    raw_tar,
    reg,
    tree,
)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- building

def test_build_and_read_round_trip(tmp_path):
    b = fake_bundle(tmp_path, "0.2.0", hardware=("pi-4", "sim"), min_version="0.1.0")
    assert b.name == "bwv-firmware-0.2.0.tar"
    m = read_manifest(b)
    assert (m.version, m.hardware, m.min_version, m.created_utc) == (
        "0.2.0", ("pi-4", "sim"), "0.1.0", CREATED)
    assert [p.path for p in m.payload] == ["bwv-0.2.0-py3-none-any.whl", "config/default.toml"]
    with tarfile.open(b) as tar:
        names = tar.getnames()
        assert names[0] == "bundle.json"
        assert json.loads(tar.extractfile("bundle.json").read())["format"] == FORMAT
        for m_ in tar.getmembers():
            assert (m_.uid, m_.gid, m_.mode, m_.isreg()) == (0, 0, 0o644, True)


def test_same_inputs_give_the_same_bytes(tmp_path):
    a = fake_bundle(tmp_path / "a", "0.2.0").read_bytes()
    b = fake_bundle(tmp_path / "b", "0.2.0").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


@pytest.mark.parametrize("kw, reason", [
    ({"version": "1.0rc1"}, "bad-version"),
    ({"min_version": "01.0"}, "bad-version"),
    ({"min_version": "0.3.0"}, "bad-version"),  # newer than the bundle itself
    ({"hardware": ["pi-3"]}, "unknown-hardware"),
    ({"hardware": []}, "malformed"),
    ({"created_utc": "2031-03-01 11:00:00"}, "malformed"),
])
def test_build_refuses_bad_fields(tmp_path, kw, reason):
    f = tmp_path / "x"
    f.write_bytes(b"x")
    args = dict(version="0.2.0", hardware=["sim"], min_version="0", files={"x": f},
                created_utc=CREATED)
    args.update(kw)
    with pytest.raises(BundleError) as e:
        build_bundle(tmp_path / "out", **args)
    assert e.value.reason == reason
    assert not list((tmp_path / "out").glob("*.tar")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a//b", "./a", "bundle.json", "a\\b"])
def test_build_refuses_unsafe_payload_names(tmp_path, name):
    f = tmp_path / "x"
    f.write_bytes(b"x")
    with pytest.raises(BundleError) as e:
        build_bundle(tmp_path / "out", version="0.2.0", hardware=["sim"], min_version="0",
                     files={name: f}, created_utc=CREATED)
    assert e.value.reason == "unsafe-member"


# ---------------------------------------------------------------------------- hostile tars

GOOD = {"bwv-0.2.0-py3-none-any.whl": b"wheel bytes" * 10, "config/default.toml": b"[log]\n"}


def _good_members(files=GOOD, **mkw):
    return [(reg("bundle.json"), manifest_bytes(files, **mkw))] + [
        (reg(p), d) for p, d in files.items()]


def _link(name, target, kind=tarfile.SYMTYPE):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, target
    return ti


def _special(name, kind):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    return ti


BAD = {
    "path traversal": (lambda: _good_members() + [(reg("../evil"), b"x")], "unsafe-member", "'..'"),
    "absolute path": (lambda: _good_members() + [(reg("/tmp/evil"), b"x")], "unsafe-member",
                      "absolute"),
    "symlink": (lambda: _good_members()[:2] + [(_link("config/default.toml", "/etc/passwd"), None)],
                "unsafe-member", "link"),
    "hard link": (lambda: _good_members()[:2] + [(_link("config/default.toml",
                                                        "bwv-0.2.0-py3-none-any.whl",
                                                        tarfile.LNKTYPE), None)],
                  "unsafe-member", "link"),
    "device": (lambda: _good_members() + [(_special("dev", tarfile.CHRTYPE), None)],
               "unsafe-member", "device"),
    "fifo": (lambda: _good_members() + [(_special("pipe", tarfile.FIFOTYPE), None)],
             "unsafe-member", "fifo"),
    "directory": (lambda: _good_members() + [(_special("config", tarfile.DIRTYPE), None)],
                  "unsafe-member", "directory"),
    "duplicate member": (lambda: _good_members() + [(reg("config/default.toml"), b"[log]\n")],
                         "unsafe-member", "twice"),
    "second bundle.json": (lambda: _good_members() + [(reg("bundle.json"), b"{}")],
                           "unsafe-member", "twice"),
    "missing payload file": (lambda: _good_members()[:2], "missing-file", "config/default.toml"),
    "unlisted file": (lambda: _good_members() + [(reg("extra.sh"), b"rm -rf /")],
                      "unlisted-file", "extra.sh"),
    "hash mismatch": (lambda: [(reg("bundle.json"), manifest_bytes(GOOD)),
                               (reg("bwv-0.2.0-py3-none-any.whl"), b"WHEEL BYTES" * 10),
                               (reg("config/default.toml"), b"[log]\n")],
                      "hash-mismatch", "bwv-0.2.0-py3-none-any.whl"),
    "size beyond the manifest": (lambda: [(reg("bundle.json"), manifest_bytes(GOOD)),
                                          (reg("bwv-0.2.0-py3-none-any.whl"), b"wheel bytes" * 11),
                                          (reg("config/default.toml"), b"[log]\n")],
                                 "length-mismatch", "bwv-0.2.0-py3-none-any.whl"),
    "manifest not first": (lambda: list(reversed(_good_members())), "missing-file", "first member"),
    "manifest not JSON": (lambda: [(reg("bundle.json"), b"{nope")], "malformed", "not valid JSON"),
    # json.loads raises a bare ValueError for an integer over Python's 4300 digits
    "manifest integer too long": (lambda: [(reg("bundle.json"), b'{"size": ' + b"9" * 5000 + b"}")],
                                  "malformed", "not valid JSON"),
    "unknown manifest key": (lambda: _good_members(extra_key=1), "malformed", "extra_key"),
    "other format": (lambda: _good_members(format="bwv-firmware-bundle/9"), "malformed",
                     "bwv-firmware-bundle/9"),
    "bad version": (lambda: _good_members(version="2.0-beta"), "bad-version", "2.0-beta"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_hostile_bundles_are_rejected_and_nothing_is_written(tmp_path, case):
    members, reason, words = BAD[case]
    bundle = raw_tar(tmp_path / "b.tar", members())
    with pytest.raises(BundleError) as e:
        read_manifest(bundle)
    assert e.value.reason == reason, str(e.value)
    assert words in str(e.value)
    dest = tmp_path / "slot"
    before = tree(tmp_path)
    with pytest.raises(BundleError) as e2:
        extract_payload(bundle, dest)
    assert e2.value.reason == reason
    assert not dest.exists()
    assert tree(tmp_path) == before  # nothing outside the slot either (no ../evil)
    assert not (tmp_path.parent / "evil").exists()


def test_truncated_and_compressed_tars_are_refused(tmp_path):
    good = raw_tar(tmp_path / "g.tar", _good_members())
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(BundleError):
        read_manifest(cut)
    gz = tmp_path / "b.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        for ti, d in _good_members():
            ti.size = len(d)
            tar.addfile(ti, io.BytesIO(d))
    with pytest.raises(BundleError, match="not an uncompressed tar"):
        read_manifest(gz)
    with pytest.raises(BundleError, match="no such bundle") as e:
        read_manifest(tmp_path / "absent.tar")
    assert e.value.reason == "missing-file"


# ---------------------------------------------------------------------------- extraction

def test_extract_payload_writes_exactly_the_manifest(tmp_path):
    b = fake_bundle(tmp_path, "0.2.0")
    m = extract_payload(b, tmp_path / "slot")
    files = tree(tmp_path / "slot")
    assert sorted(files) == sorted(p.path for p in m.payload)
    for p in m.payload:
        assert hashlib.sha256(files[p.path]).hexdigest() == p.sha256
        assert len(files[p.path]) == p.length


def test_extract_payload_needs_an_empty_target(tmp_path):
    b = fake_bundle(tmp_path, "0.2.0")
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / "old").write_text("previous install")
    with pytest.raises(BundleError, match="absent or empty"):
        extract_payload(b, slot)
    assert tree(slot) == {"old": b"previous install"}
    empty = tmp_path / "empty"
    empty.mkdir()
    extract_payload(b, empty)
    assert (empty / "config" / "default.toml").is_file()


def test_extract_payload_rehashes_what_it_wrote(tmp_path, monkeypatch):
    """A write that lands wrong on storage (bit flip, lying cache) is caught by the
    read-back, and the half-made slot is removed."""
    import firmware.bundle as bundle_mod
    b = fake_bundle(tmp_path, "0.2.0")
    real = bundle_mod._DurableWriter.write

    def flip(self, data):
        real(self, bytes([data[0] ^ 1]) + data[1:] if data else data)
    monkeypatch.setattr(bundle_mod._DurableWriter, "write", flip)
    with pytest.raises(BundleError) as e:
        extract_payload(b, tmp_path / "slot")
    assert e.value.reason == "hash-mismatch" and "read back" in str(e.value)
    assert not (tmp_path / "slot").exists()


# ---------------------------------------------------------------------------- rules

def _m(version="0.2.0", hardware=("sim",), min_version="0.1.0"):
    return BundleManifest(version, tuple(hardware), min_version,
                          (PayloadFile("x", "0" * 64, 0),), CREATED)


@pytest.mark.parametrize("running, hw, reason", [
    ("0.1.0", "pi-5", "other-hardware"),
    ("0.2.0", "sim", "not-newer"),
    ("0.3.0", "sim", "not-newer"),
    ("0.0.9", "sim", "below-min-version"),
    ("0+source", "sim", "bad-version"),
])
def test_check_compatible_refusals(running, hw, reason):
    with pytest.raises(BundleError) as e:
        check_compatible(_m(), hardware=hw, running_version=running)
    assert e.value.reason == reason


def test_check_compatible_accepts_a_newer_bundle():
    check_compatible(_m(), hardware="sim", running_version="0.1.0")
    check_compatible(_m(), hardware="sim", running_version="0.1.5")


def test_compare_versions_examples():
    assert compare_versions("1.2", "1.2.0") == 0
    assert compare_versions("1.10", "1.9") == 1
    assert compare_versions("0.9.9", "1") == -1
    for bad in ["", "1.", ".1", "1..2", "01", "1.02", "v1", "1.0a", "1.2.3.4.5", "1 .2", "-1"]:
        with pytest.raises(BundleError):
            parse_version(bad)


versions = st.lists(st.integers(0, 10**6), min_size=1, max_size=4).map(
    lambda xs: ".".join(map(str, xs)))


@settings(max_examples=200, deadline=None)
@given(versions, versions)
def test_compare_versions_is_an_ordering(a, b):
    pad = lambda v: tuple(map(int, v.split("."))) + (0,) * (4 - len(v.split(".")))
    assert compare_versions(a, b) == (pad(a) > pad(b)) - (pad(a) < pad(b))
    assert compare_versions(a, b) == -compare_versions(b, a)


@pytest.mark.parametrize("model, hw", [
    ("Raspberry Pi Zero 2 W Rev 1.0", "pi-zero-2-w"),
    ("Raspberry Pi 4 Model B Rev 1.4", "pi-4"),
    ("Raspberry Pi 5 Model B Rev 1.0", "pi-5"),
    ("Raspberry Pi Compute Module 4 Rev 1.0", "cm4"),
    ("Raspberry Pi Compute Module 5 Rev 1.0", "cm5"),
])
def test_hardware_id_from_the_device_tree(model, hw):
    assert hardware_id(PlatformInfo("pi", model, "test")) == hw
    assert hw in HARDWARE_IDS


def test_hardware_id_sim_and_unknown_boards():
    assert hardware_id(PlatformInfo("sim", None, "test")) == "sim"
    assert hardware_id(PlatformInfo("sim", "Raspberry Pi 4 Model B", "no picamera2")) == "sim"
    for model in ("Raspberry Pi 3 Model B Plus Rev 1.3", None):
        with pytest.raises(BundleError) as e:
            hardware_id(PlatformInfo("pi", model, "test"))
        assert e.value.reason == "unknown-hardware"


class _Offer:
    def __init__(self, path, version, hardware=("sim",), min_version="0"):
        self.path = path
        self.custom = {"bwv": {"format": FORMAT, "version": version, "hardware": list(hardware),
                               "min_version": min_version}}


def test_policy_chooses_the_newest_for_this_hardware():
    offers = [_Offer("a", "0.2.0"), _Offer("b", "0.4.0", ("pi-5",)), _Offer("c", "0.3.0"),
              _Offer("d", "0.1.0"), type("X", (), {"path": "e", "custom": None})()]
    pol = BundlePolicy("sim", "0.1.0")
    assert pol.choose(offers).path == "c"
    assert BundlePolicy("sim", "0.3.0").choose(offers) is None
    with pytest.raises(BundleError) as e:
        BundlePolicy("sim", "0.3.0").choose(offers, explicit=True)
    assert e.value.reason == "not-newer"
    assert BundlePolicy("cm5", "0.1.0").choose(offers) is None
    with pytest.raises(BundleError) as e:
        BundlePolicy("cm5", "0.1.0").choose(offers, explicit=True)
    assert e.value.reason == "other-hardware" and "pi-5" in str(e.value)
    with pytest.raises(BundleError) as e:
        BundlePolicy("sim", "0.1.0").choose([_Offer("z", "2.0.0", min_version="1.0.0")])
    assert e.value.reason == "below-min-version"


def test_policy_check_requires_bundle_to_match_signed_fields(tmp_path):
    b = fake_bundle(tmp_path, "0.2.0", hardware=("sim",))
    pol = BundlePolicy("sim", "0.1.0")
    assert pol.check(b, _Offer("x", "0.2.0", ("sim",))).version == "0.2.0"
    with pytest.raises(BundleError, match="does not match the signed target fields"):
        pol.check(b, _Offer("x", "0.2.0", ("sim", "pi-5")))


# ---------------------------------------------------------------------------- the real wheel

@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory):
    from firmware.bundle_build import make_firmware
    out = tmp_path_factory.mktemp("fw")
    steps = []
    path = make_firmware(out, created_utc=CREATED, version="7.1.0", min_version="0.1.0",
                         progress=lambda d, t: steps.append((d, t)))
    assert steps[-1] == (3, 3)
    return path


def test_make_firmware_bundles_the_agent_wheel_and_default_config(real_bundle, tmp_path):
    m = extract_payload(real_bundle, tmp_path / "slot")
    assert m.version == "7.1.0" and m.hardware == tuple(sorted(HARDWARE_IDS))
    wheel = tmp_path / "slot" / "bwv-7.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read("bwv-7.1.0.dist-info/METADATA").decode()
        entry = z.read("bwv-7.1.0.dist-info/entry_points.txt").decode()
    assert "Version: 7.1.0" in meta  # the installed agent reports the bundle's version
    assert "bwv = firmware.cli:main" in entry
    assert "firmware/bundle.py" in names and "sync/firmware_fetch.py" in names
    assert not [n for n in names if "__pycache__" in n]
    cfg = validate(tomllib.loads((tmp_path / "slot" / "config" / "default.toml").read_text()))
    assert cfg.buffer.pre_record_seconds == 30


def test_bwv_bundle_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "firmware.cli", "bundle", "--out", str(tmp_path),
                        "--version", "1.0-beta"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "bwv: error: version '1.0-beta' is not a dotted numeric version like 1.2.3"]


def test_bwv_config_defaults_toml_validates():
    r = subprocess.run([sys.executable, "-m", "firmware.cli", "config", "--defaults-toml"],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    assert validate(tomllib.loads(r.stdout)).log.level == "info"
    assert os.linesep in r.stdout


def test_the_real_bundle_installs_into_an_update_slot(real_bundle, tmp_path):
    """What ``make firmware`` builds is what the A/B installer accepts: the setuptools
    wheel's RECORD checks out file by file, and the slot reports the bundle's version."""
    from firmware.slots import Slots
    from hw_sim.clock import SimClock
    slots = Slots(tmp_path / "slots", clock=SimClock())
    res = slots.install(real_bundle, read_manifest(real_bundle))
    assert res["version"] == "7.1.0"
    st = slots.status(verify=True)
    assert st["slots"][res["slot"]]["verified"] and st["slots"][res["slot"]]["problems"] == []


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    return fake_bundle(tmp_path_factory.mktemp("good"), "0.2.0").read_bytes()


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_bundles_fail_only_with_bundle_error(tmp_path_factory, good_bytes, data):
    """Any corruption (flipped bytes anywhere, truncation) is either harmless tar padding
    or a BundleError naming the problem — never another exception, never a success
    with different payload bytes."""
    buf = bytearray(good_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(buf)))
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "b.tar"
    path.write_bytes(bytes(buf[:cut]) if data.draw(st.booleans()) else bytes(buf))
    try:
        m = read_manifest(path)
    except BundleError as exc:
        assert str(exc)
        return
    m2 = extract_payload(path, d / "slot")
    assert m2 == m
    for p in m.payload:
        assert hashlib.sha256((d / "slot" / p.path).read_bytes()).hexdigest() == p.sha256
