"""Every attack on stored evidence is caught by ``bwv verify`` and named (DESIGN inv. 3).

Each test damages a private copy of a store recorded by the real agent, then checks both
the CLI (exit 1, a FAIL line naming the check *and* the segment) and the library
(``verify_path``). Verification pins the device key with ``--device-key`` (the back
office's copy of keys/device.json), never the copy that travels with the data.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buffer.clip import MANIFEST_NAME
from buffer.envelope import SEGMENT_MAGIC, parse
from buffer.store import seg_name
from buffer.verify import ClipReport, verify_path
from firmware.cli import main


@pytest.fixture
def work(store_copy) -> Path:
    return store_copy


def clips(work: Path) -> tuple[Path, Path]:
    """The two recorded clips, in recording order (A has the lower sequence numbers)."""
    dirs = [p for p in (work / "store" / "clips").iterdir() if p.is_dir()]
    dirs.sort(key=lambda d: min(int(p.name[:12]) for p in d.glob("*.bwvseg")))
    assert len(dirs) == 2
    return dirs[0], dirs[1]


def seqs(clip: Path) -> list[int]:
    return sorted(int(p.name[:12]) for p in clip.glob("*.bwvseg"))


def cli_verify(capsys, path: Path, device_key: Path) -> tuple[int, str]:
    rc = main(["verify", str(path), "--device-key", str(device_key)])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    return rc, cap.out


def fails(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("FAIL ")]


def assert_named(out: str, check: str, seq: int | None = None, where: str = "") -> None:
    hit = [ln for ln in fails(out) if f": {check}:" in ln and where in ln
           and (seq is None or f"seq {seq} (" in ln)]
    assert hit, f"no FAIL line names {check} for seq {seq}:\n{out}"


def lib_checks(report, seq: int | None = None) -> set[str]:
    clips_ = [report] if isinstance(report, ClipReport) else report.clips
    out = set()
    for c in clips_:
        if seq is None:
            out |= {name for name, _ in c.failures}
        for s in c.segments:
            if seq is None or s.seq == seq:
                out |= {name for name, _ in s.failures}
    return out


def verify_both(capsys, work: Path, path: Path | None = None):
    path = path or work / "store"
    key = work / "keys" / "device.json"
    rc, out = cli_verify(capsys, path, key)
    report = verify_path(path, key)
    assert rc == 1 and "RESULT: FAILED" in out, out
    assert not report.ok
    assert f"device key: {key}" in out  # the pinned key was used, not the store's copy
    return out, report


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def payload_offset(path: Path) -> int:
    return parse(path.read_bytes(), SEGMENT_MAGIC).payload_offset


# --------------------------------------------------------------------------- controls
def test_untouched_store_verifies_ok(capsys, work):
    rc, out = cli_verify(capsys, work / "store", work / "keys" / "device.json")
    assert rc == 0 and "RESULT: OK" in out and not fails(out), out
    assert verify_path(work / "store", work / "keys" / "device.json").ok
    a, _ = clips(work)
    rc, out = cli_verify(capsys, a, work / "keys" / "device.json")  # a clip on its own
    assert rc == 0, out


def test_other_devices_record_does_not_verify_this_store(capsys, work, other_device):
    other_key = other_device.store_dir.parent / "keys" / "device.json"
    rc, out = cli_verify(capsys, work / "store", other_key)
    assert rc == 1, out
    a, _ = clips(work)
    for s in seqs(a):
        assert_named(out, "SignatureInvalid", s)
        assert_named(out, "WrongDevice", s)
    assert "audit line 1: SignatureInvalid" in out
    assert not verify_path(work / "store", other_key).ok


# ---------------------------------------------------------------------------- attacks
def test_byte_flip_in_ciphertext(capsys, work):
    a, _ = clips(work)
    p = a / seg_name(5)
    flip(p, payload_offset(p) + 100)
    out, report = verify_both(capsys, work)
    assert_named(out, "PayloadHashMismatch", 5)
    assert lib_checks(report, 5) == {"PayloadHashMismatch"}
    assert all(" seq 5 (" in ln for ln in fails(out)), "an untouched segment was blamed"


def test_byte_flip_in_header(capsys, work):
    a, _ = clips(work)
    p = a / seg_name(6)
    data = p.read_bytes()
    at = data.index(b'"officer_id":"') + len(b'"officer_id":"')  # stays valid JSON
    flip(p, at)
    out, report = verify_both(capsys, work)
    assert_named(out, "SignatureInvalid", 6)
    assert "SignatureInvalid" in lib_checks(report, 6)
    assert all(" seq 6 (" in ln for ln in fails(out))


def test_deleted_segment(capsys, work):
    a, _ = clips(work)
    (a / seg_name(7)).unlink()
    out, report = verify_both(capsys, work)
    assert_named(out, "SegmentMissing", 7)
    assert lib_checks(report, 7) == {"SegmentMissing"}
    assert "GAP after seq 6 before seq 8: segment_missing" in out  # never closed up


def test_inserted_segment(capsys, work):
    a, _ = clips(work)
    ring = work / "store" / "ring"
    genuine = sorted(ring.glob("*.bwvseg"))[0]
    seq = int(genuine.name[:12])
    shutil.copy(genuine, a / genuine.name)
    out, report = verify_both(capsys, work)
    assert_named(out, "SegmentNotInManifest", seq, where=a.name)
    assert lib_checks(report, seq) >= {"SegmentNotInManifest"}


def test_reordered_segments(capsys, work):
    a, _ = clips(work)
    p5, p6 = a / seg_name(5), a / seg_name(6)
    d5, d6 = p5.read_bytes(), p6.read_bytes()
    p5.write_bytes(d6)
    p6.write_bytes(d5)
    out, report = verify_both(capsys, work)
    for s in (5, 6):
        assert lib_checks(report, s) & {"SegmentReplayed", "SequenceMismatch"}, s
        assert "ChainBroken" in lib_checks(report, s)
        assert_named(out, "ChainBroken", s)
    assert_named(out, "SegmentReplayed", 5)


def test_truncated_segment(capsys, work):
    a, _ = clips(work)
    p = a / seg_name(8)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 1000])
    out, report = verify_both(capsys, work)
    assert_named(out, "PayloadTruncated", 8)
    assert lib_checks(report, 8) == {"PayloadTruncated"}


def test_segment_replayed_from_the_other_clip(capsys, work):
    a, b = clips(work)
    shutil.copy(b / seg_name(seqs(b)[3]), a / seg_name(5))
    out, report = verify_both(capsys, work)
    assert_named(out, "SegmentReplayed", 5)
    assert "SegmentReplayed" in lib_checks(report, 5)


def test_segment_from_another_device(capsys, work, other_device):
    a, _ = clips(work)
    foreign = sorted(other_device.store_dir.rglob("*.bwvseg"))[2]
    shutil.copy(foreign, a / seg_name(5))
    out, report = verify_both(capsys, work)
    assert_named(out, "SignatureInvalid", 5)
    assert_named(out, "WrongDevice", 5)
    assert {"SignatureInvalid", "WrongDevice"} <= lib_checks(report, 5)


def test_edited_manifest(capsys, work):
    a, _ = clips(work)
    m = a / MANIFEST_NAME
    data = m.read_bytes()
    flip(m, data.index(b'"stop_reason":"') + len(b'"stop_reason":"'))
    out, report = verify_both(capsys, work)
    assert_named(out, "SignatureInvalid", where=f"clip {a.name}: SignatureInvalid: manifest")
    assert "SignatureInvalid" in {c for c, _ in report.clips[[c.clip_id for c in report.clips]
                                                          .index(a.name)].failures}


def test_manifest_swapped_from_the_other_clip(capsys, work):
    a, b = clips(work)
    shutil.copy(b / MANIFEST_NAME, a / MANIFEST_NAME)
    out, report = verify_both(capsys, work)
    assert_named(out, "ManifestInvalid", where=f"clip {a.name}:")
    assert any(": ManifestInvalid: manifest is for clip" in ln and b.name in ln
               for ln in fails(out)), out  # the clip id mismatch, with both ids
    assert_named(out, "SegmentMissing", seqs(b)[0], where=a.name)
    assert_named(out, "SegmentNotInManifest", seqs(a)[0], where=a.name)


def test_deleted_manifest_is_not_silently_skipped(capsys, work):
    a, _ = clips(work)
    (a / MANIFEST_NAME).unlink()
    flip(a / seg_name(5), payload_offset(a / seg_name(5)) + 10)  # and hide a change behind it
    out, report = verify_both(capsys, work)
    assert_named(out, "ManifestInvalid", where=f"clip {a.name}:")
    assert_named(out, "PayloadHashMismatch", 5)


def test_ring_segment_tampered(capsys, work):
    ring = sorted((work / "store" / "ring").glob("*.bwvseg"))
    seq = int(ring[-1].name[:12])
    flip(ring[-1], payload_offset(ring[-1]) + 5)
    out, _ = verify_both(capsys, work)
    assert any(ln.startswith(f"FAIL ring seq {seq} ") and "PayloadHashMismatch" in ln
               for ln in fails(out)), out


@pytest.mark.parametrize("how", ["edit", "delete", "not_an_object"])
def test_audit_log_line_edited_or_deleted(capsys, work, how):
    log = work / "store" / "audit.log"
    lines = log.read_bytes().split(b"\n")
    if how == "edit":
        edited = lines[1].replace(b'"event":"', b'"event":"x', 1)
        assert edited != lines[1]
        lines[1] = edited
    elif how == "delete":
        del lines[1]
    else:
        lines[1] = b'[]\t' + lines[1].rsplit(b"\t", 1)[1]
    log.write_bytes(b"\n".join(lines))
    out, report = verify_both(capsys, work)
    problems = "\n".join(report.audit_problems)
    if how == "edit":
        assert "audit line 2: SignatureInvalid" in problems
        assert "audit line 3: ChainBroken" in problems
    elif how == "delete":
        assert "audit line 2: ChainBroken" in problems
        assert "audit line 2: SequenceMismatch" in problems
    else:
        assert "audit line 2: malformed" in problems
        assert "audit line 3: ChainBroken" in problems
    assert "audit log: " in out and "FAILED" in out
    for p in report.audit_problems:
        assert f"FAIL {p}" in out


# ----------------------------------------------------------------------------- export
def test_export_refuses_a_tampered_clip(capsys, work, tmp_path):
    a, b = clips(work)
    p = a / seg_name(5)
    flip(p, payload_offset(p) + 100)
    out_mp4 = tmp_path / "out" / "a.mp4"
    rc = main(["export", str(a), "--identity", str(work / "agency" / "agency.key"),
               "-o", str(out_mp4), "--device-key", str(work / "keys" / "device.json")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "refusing to export" in err and "PayloadHashMismatch" in err and "seq 5 (" in err
    assert "Traceback" not in err
    assert not out_mp4.exists() and not out_mp4.with_suffix(".report.json").exists()
    assert not list(tmp_path.rglob("*.mp4*"))
    # the control: the untouched clip of the same store exports
    ok_mp4 = tmp_path / "ok" / "b.mp4"
    rc = main(["export", str(b), "--identity", str(work / "agency" / "agency.key"),
               "-o", str(ok_mp4), "--device-key", str(work / "keys" / "device.json")])
    assert rc == 0, capsys.readouterr().err
    assert ok_mp4.stat().st_size > 0


def test_whole_clip_deleted_is_named_from_the_audit_log(store_copy, capsys):
    import shutil as _sh
    from firmware.cli import main as _main
    clips = sorted((store_copy / "store" / "clips").iterdir())
    _sh.rmtree(clips[0])
    code = _main(["verify", str(store_copy / "store"),
                  "--device-key", str(store_copy / "keys" / "device.json")])
    out = capsys.readouterr().out
    assert code == 1
    assert f"ClipMissing: audit record" in out and clips[0].name in out


def test_damaged_last_audit_record_does_not_stop_the_camera(store_copy):
    from buffer.store import Store, StoreSettings
    from buffer.verify import verify_path as _vp
    from drivers.keystore import FileKeyStore
    from hw_sim.clock import SimClock
    audit = store_copy / "store" / "audit.log"
    lines = audit.read_bytes().split(b"\n")
    lines[-2] = lines[-2][:40] + b"garbage" + lines[-2][60:]  # last complete line damaged
    audit.write_bytes(b"\n".join(lines))
    store = Store.open(store_copy / "store", FileKeyStore(store_copy / "keys"), SimClock(),
                       StoreSettings(), officer_id="T")
    assert store.recovery.audit_damaged_tail
    store.close()
    report = _vp(store_copy / "store")
    assert any("malformed" in p or "SignatureInvalid" in p for p in report.audit_problems)
    # the records after the damage still chain on from it
    assert not any("ChainBroken" in p for p in report.audit_problems), report.audit_problems
