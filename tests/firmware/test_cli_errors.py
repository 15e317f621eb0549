"""Every mistake a person can make at the ``bwv`` prompt: one clear line on stderr, a
non-zero exit, no traceback, and nothing on disk touched."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firmware.cli import main
from hw_sim.runner import write_agency_identity


def tree(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


def run_cli(capsys, argv: list[str], cwd_tree: Path) -> tuple[int, str]:
    before = tree(cwd_tree)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    assert tree(cwd_tree) == before, "a failed command changed files"
    err = cap.err.strip()
    assert rc not in (0, None), (argv, cap.out, err)
    assert err.startswith("bwv: error: ") and "\n" not in err, repr(err)
    return rc, err


@pytest.fixture
def work(store_copy) -> Path:
    return store_copy


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# ------------------------------------------------------------------------- config
def test_corrupted_toml(capsys, tmp_path):
    cfg = write(tmp_path / "bad.toml", "[buffer\npre_record_seconds = = 3\n")
    rc, err = run_cli(capsys, ["config", "--check", str(cfg)], tmp_path)
    assert rc == 2 and str(cfg) in err and "not valid TOML" in err
    rc, err = run_cli(capsys, ["sim", "--config", str(cfg), "--workdir", str(tmp_path / "sim"),
                               "--quiet"], tmp_path)
    assert rc == 2 and "not valid TOML" in err
    assert not (tmp_path / "sim").exists()


def test_binary_garbage_config(capsys, tmp_path):
    cfg = write(tmp_path / "bin.toml", b"\xff\xfe\x00garbage")
    rc, err = run_cli(capsys, ["config", "--check", str(cfg)], tmp_path)
    assert rc == 2 and str(cfg) in err


def test_invalid_value_names_the_key(capsys, tmp_path):
    cfg = write(tmp_path / "c.toml", "[buffer]\npre_record_seconds = 500\n")
    rc, err = run_cli(capsys, ["config", "--check", str(cfg)], tmp_path)
    assert rc == 2 and "buffer.pre_record_seconds" in err and "500" in err
    cfg = write(tmp_path / "d.toml", '[buffer]\npre_record_seconds = "thirty"\n')
    rc, err = run_cli(capsys, ["sim", "--config", str(cfg), "--workdir", str(tmp_path / "sim")],
                      tmp_path)
    assert "buffer.pre_record_seconds" in err and not (tmp_path / "sim").exists()


def test_unknown_key(capsys, tmp_path):
    cfg = write(tmp_path / "c.toml", "[buffer]\nprerecord_seconds = 3\n")
    rc, err = run_cli(capsys, ["config", "--check", str(cfg)], tmp_path)
    assert rc == 2 and "buffer.prerecord_seconds" in err and "unknown key" in err


def test_missing_config_file(capsys, tmp_path):
    rc, err = run_cli(capsys, ["config", "--check", str(tmp_path / "nope.toml")], tmp_path)
    assert rc == 2 and "nope.toml" in err


# --------------------------------------------------------------------------- keys
def test_missing_keys_dir_for_device(capsys, work):
    missing = work / "no-such-keys" / "device.json"
    rc, err = run_cli(capsys, ["verify", str(work / "store"), "--device-key", str(missing)], work)
    assert rc == 2 and str(missing) in err
    clip = next(p for p in (work / "store" / "clips").iterdir())
    rc, err = run_cli(capsys, ["export", str(clip), "--identity", str(work / "agency" / "agency.key"),
                               "-o", str(work / "out.mp4"), "--device-key", str(missing)], work)
    assert rc == 2 and str(missing) in err
    rc, err = run_cli(capsys, ["keys", "device", "--dir", str(work / "k2"), "--id", "X1",
                               "--recipient-file", str(work / "no-such-keys" / "agency.recipient")],
                      work)
    assert rc == 2 and "agency.recipient" in err


def test_device_key_that_is_not_a_device_record(capsys, work):
    rc, err = run_cli(capsys, ["verify", str(work / "store"), "--device-key",
                               str(work / "keys" / "device.key")], work)
    assert rc == 2 and "device.key" in err and "not a device record" in err


# ------------------------------------------------------------------ verify / export
def test_verify_a_directory_that_is_not_a_store(capsys, tmp_path):
    d = tmp_path / "some" / "dir"
    write(d / "holiday.jpg", b"\xff\xd8not evidence")
    rc, err = run_cli(capsys, ["verify", str(d)], tmp_path)
    assert rc == 2 and "not a bwv store" in err and str(d) in err
    rc, err = run_cli(capsys, ["verify", str(tmp_path / "absent")], tmp_path)
    assert rc == 2 and "does not exist" in err


def test_garbage_file_to_verify_and_export(capsys, work, tmp_path):
    junk = write(tmp_path / "junk.bwvseg", b"\x00garbage" * 100)
    rc, err = run_cli(capsys, ["verify", str(junk)], tmp_path)
    assert rc == 2 and str(junk) in err
    rc, err = run_cli(capsys, ["export", str(junk), "--identity",
                               str(work / "agency" / "agency.key"), "-o", str(tmp_path / "o.mp4")],
                      tmp_path)
    assert rc == 2 and str(junk) in err and "not a clip" in err
    assert not (tmp_path / "o.mp4").exists()


def test_export_with_another_agencys_identity(capsys, work, tmp_path):
    write_agency_identity(tmp_path / "other-agency")
    other = tmp_path / "other-agency" / "agency.key"
    clip = next(p for p in (work / "store" / "clips").iterdir())
    out = tmp_path / "out" / "clip.mp4"
    rc, err = run_cli(capsys, ["export", str(clip), "--identity", str(other), "-o", str(out)], tmp_path)
    assert rc == 2 and str(other) in err and "wrong agency identity" in err
    assert not out.exists() and not list(tmp_path.rglob("*.mp4*"))


@pytest.mark.parametrize("content", ["device_json", "text", "binary", "bad_key"])
def test_export_with_a_non_identity_file(capsys, work, tmp_path, content):
    ident = {"device_json": work / "keys" / "device.json",
             "text": write(tmp_path / "notes.txt", "hello\n"),
             "binary": write(tmp_path / "blob", b"\xff\x00\xfe" * 10),
             "bad_key": write(tmp_path / "bad.key", "AGE-SECRET-KEY-1NOTAKEY\n")}[content]
    clip = next(p for p in (work / "store" / "clips").iterdir())
    out = tmp_path / "o.mp4"
    rc, err = run_cli(capsys, ["export", str(clip), "--identity", str(ident), "-o", str(out)], work)
    assert rc == 2 and str(ident) in err
    assert not out.exists()


def test_the_installed_command_prints_one_line_too(tmp_path):
    """The same through the real entry point and interpreter (no in-process capture)."""
    cfg = write(tmp_path / "c.toml", "[buffer]\npre_record_seconds = -1\n")
    proc = subprocess.run([sys.executable, "-m", "firmware.cli", "config", "--check", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "buffer.pre_record_seconds" in proc.stderr
    assert "Traceback" not in proc.stderr
