"""Numbers and names from files a store holds are untrusted: a 4300-digit integer parses
as JSON, but what is computed from it may no longer print, and "²".isdigit() is true
while int() refuses it. Each must end in a named finding, never another exception
(the fuzz regressions in fuzz/regressions/{audit,segment} replay the same inputs)."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buffer import audit
from buffer.store import parse_seg_name
from hw_sim.clock import SimClock

HUGE = int("9" * 4300)  # the most digits json.loads accepts
SIG = base64.b64encode(bytes(64))


def _line(body: dict) -> bytes:
    return json.dumps(body).encode() + b"\t" + SIG + b"\n"


def test_segment_names_are_ascii_digits_only():
    assert parse_seg_name("000000000042.bwvseg") == 42
    assert parse_seg_name("00000000000\u00b2.bwvseg") is None  # int() refuses "²"
    assert parse_seg_name("\u0660" * 12 + ".bwvseg") is None  # Arabic-Indic digits
    assert parse_seg_name("00000000004.bwvseg") is None


def test_a_last_record_with_a_huge_seq_is_a_damaged_tail(tmp_path):
    path = tmp_path / "audit.log"
    path.write_bytes(_line({"seq": HUGE}))
    log = audit.AuditLog(path, device_id="BWV-T", sign=Ed25519PrivateKey.generate().sign,
                         clock=SimClock())
    assert log.damaged_tail
    rec = log.append("after_damage")
    assert rec.body["seq"] == 1  # counts on from the lines in the file


def test_verify_audit_names_a_huge_seq_and_counts_on(tmp_path):
    path = tmp_path / "audit.log"
    path.write_bytes(_line({"seq": HUGE}) + _line({"seq": 1}))
    count, problems = audit.verify_audit(path, lambda sig, msg: False, "BWV-T")
    assert count == 2
    mismatches = [p for p in problems if "SequenceMismatch" in p]
    assert len(mismatches) == 1 and mismatches[0].startswith("audit line 1:")


@pytest.mark.parametrize("bad", ["cam-1\n", "cam-1\r", "", ".cam", "c" * 65, "cam/1"])
def test_a_device_id_is_matched_whole(bad):
    """``$`` also matches before a final newline: ``"cam-1\\n"`` passed as a device id
    (it names directories and travels in every signed header)."""
    from drivers.keystore import KeyStoreError, validate_device_id
    with pytest.raises(KeyStoreError):
        validate_device_id(bad)
    assert validate_device_id("cam-1") == "cam-1"
