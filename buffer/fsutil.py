"""Durable file operations: the only way ``buffer`` writes, moves or deletes.

A write is durable when the file's data *and* its name are on stable storage: data
by fsync of the file, the name by fsync of the directory that holds it. Every
acknowledgement in bwv waits for both (DESIGN invariant 4).
"""
from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(name: str) -> str:
    """Hidden temp name beside the target, so recovery finds and removes leftovers."""
    return f".{name}{TMP_SUFFIX}"


def write_all_fsync(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer) and fsync the file's data."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


def write_durable(directory: Path, name: str, data: bytes, mode: int = 0o640) -> Path:
    """Write to a temp file, fsync it, rename into place, fsync the directory."""
    tmp = directory / tmp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all_fsync(fd, data)
    finally:
        os.close(fd)
    final = directory / name
    os.replace(tmp, final)
    fsync_dir(directory)
    return final


def move_durable(src: Path, dst_dir: Path, *, no_replace: bool = False) -> Path:
    """Rename within one filesystem (no copy) and make both directory entries durable.

    With ``no_replace`` an existing file of the same name in ``dst_dir`` is never
    replaced: the moved file gets a ``.1``, ``.2``… suffix instead (quarantine keeps
    everything it is given).
    """
    dst = dst_dir / src.name
    if no_replace:
        n = 0
        while True:
            try:  # link(2) fails if the name exists: no check-then-rename race
                os.link(src, dst)
            except FileExistsError:
                n += 1
                dst = dst_dir / f"{src.name}.{n}"
                continue
            except OSError:  # no hard links on this filesystem (FAT): check, then rename
                if not os.path.lexists(dst):
                    os.rename(src, dst)
                    break
                n += 1
                dst = dst_dir / f"{src.name}.{n}"
                continue
            os.unlink(src)
            break
        fsync_dir(dst_dir)
        fsync_dir(src.parent)
        return dst
    os.rename(src, dst)
    fsync_dir(dst_dir)
    fsync_dir(src.parent)
    return dst


def unlink_durable(path: Path, missing_ok: bool = True) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
    fsync_dir(path.parent)


def mkdir_durable(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent)
