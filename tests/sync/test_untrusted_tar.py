"""Hostile tar headers cannot size our reads (found by the ``bundle`` fuzz target:
a GNU long-name header claiming more bytes than fit in an index raised OverflowError
out of ``tarfile``)."""
from __future__ import annotations

import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from firmware import bundle as fb
from sync.firmware_fetch import BadArchive, unpack_archive
from sync.untrusted_tar import TAR_FAILURES, open_untrusted_tar


def _header(name: bytes, typeflag: bytes, size_field: bytes) -> bytes:
    """One 512-byte ustar header with ``size_field`` written raw into the size slot."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = size_field
    h[136:148] = b"00000000000\0"
    h[156:157] = typeflag
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % (sum(h) & 0o777777)
    return bytes(h)


def _base256(n: int) -> bytes:
    """tarfile's GNU base-256 size encoding, which allows sizes octal cannot hold."""
    return bytes([0x80]) + n.to_bytes(11, "big")


HOSTILE = {
    # 2**80 bytes: tarfile's own read raises OverflowError without the bound
    "gnu-longname-2^80": _header(b"././@LongLink", b"L", _base256(2 ** 80)),
    # 512 GiB: would make CPython try to allocate that much for the read
    "gnu-longname-512GiB": _header(b"././@LongLink", b"L", _base256(2 ** 39)),
    "pax-header-2^80": _header(b"././@PaxHeader", b"x", _base256(2 ** 80)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_lying_header_size_is_a_tar_error_not_an_allocation(tmp_path: Path, name: str) -> None:
    p = tmp_path / "t.tar"
    p.write_bytes(HOSTILE[name] + b"A" * 1024 + b"\0" * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(TAR_FAILURES):
            with open_untrusted_tar(p) as tar:
                tar.getmembers()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"reading {name} allocated {peak} bytes"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_bundle_and_archive_readers_name_the_damage(tmp_path: Path, name: str) -> None:
    p = tmp_path / "t.tar"
    p.write_bytes(HOSTILE[name] + b"A" * 1024 + b"\0" * 1024)
    with pytest.raises(fb.BundleError) as e:
        fb.read_manifest(p)
    assert e.value.reason == "malformed" and "tar" in str(e.value)
    with pytest.raises(BadArchive, match="tar"):
        unpack_archive(p, tmp_path / "out")


def test_a_good_tar_reads_the_same_and_closes_its_file(tmp_path: Path) -> None:
    p = tmp_path / "ok.tar"
    with tarfile.open(p, "w", format=tarfile.GNU_FORMAT) as t:
        long = "d/" + "n" * 200  # needs a GNU long-name header, read through the bound
        info = tarfile.TarInfo(long)
        info.size = 5
        t.addfile(info, io.BytesIO(b"hello"))
    tar = open_untrusted_tar(p)
    with tar:
        (m,) = tar.getmembers()
        assert m.name == long and tar.extractfile(m).read() == b"hello"
    assert tar._bounded.closed


def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_untrusted_tar(tmp_path / "absent.tar")
