"""`bwv log` and `bwv assign`: a technician reads the audit log and assigns an officer."""
from __future__ import annotations

import json

from firmware.cli import main as bwv


def test_log_prints_every_record_and_checks_the_chain(store_copy, capsys):
    store = str(store_copy / "store")
    assert bwv(["log", "--store", store, "--json"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert "chain and signatures OK" in err
    assert bwv(["log", "--store", store]) == 0
    assert "record_start" in capsys.readouterr().out
    log = store_copy / "store" / "audit.log"
    lines = log.read_bytes().split(b"\n")
    del lines[2]
    log.write_bytes(b"\n".join(lines))
    assert bwv(["log", "--store", store]) == 1
    assert "ChainBroken" in capsys.readouterr().err


def test_assign_is_kept_and_audited(store_copy, capsys):
    store, keys = str(store_copy / "store"), str(store_copy / "keys")
    assert bwv(["assign", "OFC-77", "--by", "sgt. Example", "--store", store, "--keys", keys]) == 0
    capsys.readouterr()
    assert bwv(["log", "--store", store, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    a = [r for r in records if r["event"] == "assignment"]
    assert a and a[-1]["data"] == {"officer_id": "OFC-77", "by": "sgt. Example"}
