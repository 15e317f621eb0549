"""Target ``bundle``: a firmware bundle (a tar) as the device reads and installs it
(``firmware.bundle``).

``read_manifest`` may only raise ``BundleError`` (with a message and a known
``reason``). Only when it accepts the bundle — the cheap check first; writing a slot
costs file creation and fsyncs — the bundle is extracted with ``extract_payload`` into
a fresh directory: again only ``BundleError``, and what it writes must be exactly the
listed files, inside that directory, with their signed lengths and hashes; nothing
may appear beside it. The accepted manifest also goes through ``check_compatible``
and ``target_fields`` (the fields ``bwv release`` signs).

The mutator rebuilds the tar with ``tarfile`` around a structural change — the
manifest's JSON, a member's name (traversal, absolute, backslash), type (symlink,
hard link, directory, device, fifo), size or content, a duplicate, missing or unlisted
member — or mutates bytes and then repairs the header checksums, so inputs get past
the checksum to the member logic.
"""
from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

from firmware import bundle as fb
from fuzz.harness import Defect, named, scratch
from fuzz.jsonmut import mutate_json_bytes

REASONS = {"malformed", "unsafe-member", "missing-file", "unlisted-file", "length-mismatch",
           "hash-mismatch", "other-hardware", "not-newer", "below-min-version", "bad-version",
           "unknown-hardware"}
_dirs: dict = {}


def _allowed(exc: fb.BundleError) -> None:
    named(exc)
    if exc.reason not in REASONS:
        raise Defect(f"BundleError reason {exc.reason!r} is not documented")


def check(data: bytes) -> None:
    if not _dirs:
        work = scratch() / "bundle"
        work.mkdir()
        _dirs.update(work=work, tar=work / "b.tar", dest=work / "slot")
    work, tar, dest = _dirs["work"], _dirs["tar"], _dirs["dest"]
    tar.write_bytes(data)
    try:
        manifest = fb.read_manifest(tar)
    except fb.BundleError as exc:
        _allowed(exc)
        return
    fb.target_fields(manifest)
    try:
        fb.check_compatible(manifest, hardware="sim", running_version="0.5.0")
    except fb.BundleError as exc:
        _allowed(exc)
    if dest.exists():
        shutil.rmtree(dest)
    try:
        fb.extract_payload(tar, dest)
    except fb.BundleError as exc:
        _allowed(exc)
        written = [p for p in dest.rglob("*")] if dest.exists() else []
        if any(p.is_file() for p in written):
            raise Defect(f"a refused extraction left files behind: {written[:3]}")
    else:
        files = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*") if not p.is_dir()}
        listed = {pf.path: pf for pf in manifest.payload}
        if set(files) != set(listed):
            raise Defect(f"extracted {sorted(files)[:5]}, manifest lists {sorted(listed)[:5]}")
        for name, p in files.items():
            if p.is_symlink() or p.stat().st_size != listed[name].length:
                raise Defect(f"{name} extracted as a link or with the wrong length")
    beside = sorted(p.name for p in work.iterdir())
    if not set(beside) <= {"b.tar", "slot"}:
        raise Defect(f"extraction wrote beside its directory: {beside}")


# ------------------------------------------------------------------------- mutation
_NAMES = ["../escape", "/etc/passwd", "wheels/../../x", "wheels\\x", "a//b", "./a", "wheels/",
          "bundle.json", "wheels/x.whl/y", "x" * 300, "wheels/\x01", "config"]


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        for m in t:
            f = t.extractfile(m) if m.isreg() else None
            out.append((m, f.read() if f else b""))
    return out


def _pack(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for m, content in members:
            if m.isreg():
                m.size = len(content) if m.size == len(content) or m.size < 0 else m.size
                t.addfile(m, io.BytesIO(content + b"\0" * max(0, m.size - len(content))))
            else:
                t.addfile(m)
    return buf.getvalue()


def _fix_checksums(data: bytes) -> bytes:
    buf = bytearray(data)
    for off in range(0, len(buf) - 511, 512):
        if buf[off + 257:off + 262] == b"ustar":
            buf[off + 148:off + 156] = b" " * 8
            buf[off + 148:off + 156] = b"%06o\0 " % (sum(buf[off:off + 512]) & 0o777777)
    return bytes(buf)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris
    rng = random.Random(seed)
    r = rng.random()
    if r < 0.25:
        return _fix_checksums(atheris.Mutate(data, max_size))
    try:
        members = _members(data)
    except Exception:  # noqa: BLE001 — not a tar we can rebuild: mutate its bytes
        return _fix_checksums(atheris.Mutate(data, max_size))
    if not members:
        return atheris.Mutate(data, max_size)
    i = rng.randrange(len(members))
    m, content = members[i]
    op = rng.random()
    if op < 0.4 and members[0][0].name == fb.MANIFEST_NAME:
        mj = mutate_json_bytes(members[0][1], rng) or atheris.Mutate(members[0][1], 4096)
        members[0] = (members[0][0], mj)
        members[0][0].size = len(mj)
    elif op < 0.55:
        m.name = rng.choice(_NAMES + [n.name for n, _ in members])
    elif op < 0.7:
        m.type = rng.choice([tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE,
                             tarfile.FIFOTYPE, tarfile.REGTYPE])
        m.linkname = rng.choice(["../../etc/passwd", "/tmp/x", members[0][0].name])
    elif op < 0.8:
        members[i] = (m, atheris.Mutate(content, len(content) + 64))
        if rng.random() < 0.5:
            m.size = len(members[i][1])
    elif op < 0.9:
        r2 = rng.random()
        if r2 < 0.4:
            members.insert(rng.randrange(len(members) + 1), (tarfile.TarInfo(m.name), b""))
        elif r2 < 0.7 and len(members) > 1:
            del members[i]
        else:
            extra = tarfile.TarInfo(rng.choice(["wheels/extra.whl", "unlisted", "config/x"]))
            members.append((extra, b"x"))
    else:
        rng.shuffle(members)
    try:
        out = _pack(members, rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    except Exception:  # noqa: BLE001 — tarfile refuses (a name too long for USTAR, ...)
        return _fix_checksums(atheris.Mutate(data, max_size))
    return out[:max_size]


def seeds(out: Path) -> None:
    """Two real bundles made by ``build_bundle`` (tiny payloads)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "w.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)
        (src / "bwv.toml").write_text('[device]\nplatform = "sim"\n')
        a = fb.build_bundle(src / "a", version="1.2.0", hardware=["sim", "pi-5"], min_version="0.1.0",
                            files={"wheels/bwv-1.2.0-py3-none-any.whl": src / "w.whl",
                                   "config/bwv.toml": src / "bwv.toml"},
                            created_utc="2026-01-15T12:00:00Z")
        b = fb.build_bundle(src / "b", version="2.0", hardware=["cm4"], min_version="1.0",
                            files={"x": src / "bwv.toml"}, created_utc="2026-02-01T00:00:00Z")
        out.mkdir(parents=True, exist_ok=True)
        (out / a.name).write_bytes(a.read_bytes())
        (out / b.name).write_bytes(b.read_bytes())
        json.loads(fb.read_manifest(a).to_json())
