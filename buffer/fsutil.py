"""Durable file operations: the only way ``buffer`` writes, moves or deletes.

A write is durable when the file's data *and* its name are on stable storage: data
by fsync of the file, the name by fsync of the directory that holds it. Every
acknowledgement in bwv waits for both (DESIGN invariant 4).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

TMP_SUFFIX = ".tmp"
#: link(2) errors that mean "no hard links here" (FAT/exFAT, some network shares).
NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


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
        try:
            write_all_fsync(fd, data)
        finally:
            os.close(fd)
        final = directory / name
        os.replace(tmp, final)
    except OSError:
        # An I/O error: nothing was promised; leave no temp file behind (a stray file in
        # a clip would stop its release until the next start's recovery removed it).
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)
    return final


def move_durable(src: Path, dst_dir: Path, *, no_replace: bool = False) -> Path:
    """Move within one filesystem (no copy) so that a power cut leaves the file under its
    new name, or under both names, never under neither.

    A rename is two directory updates, and each directory is durable only once it is
    fsynced itself: a cut between the two fsyncs may keep the old name's removal and
    lose the new name. So: link into ``dst_dir``, fsync it, then unlink the old name
    and fsync its directory (recovery removes a duplicate name it finds). Filesystems
    without hard links (FAT) get a rename, the best they allow.

    With ``no_replace`` an existing file of the same name in ``dst_dir`` is never
    replaced: the moved file gets a ``.1``, ``.2``… suffix instead (quarantine keeps
    everything it is given).
    """
    dst = dst_dir / src.name
    n = 0
    while True:
        try:  # link(2) fails if the name exists: no check-then-rename race
            os.link(src, dst)
        except FileExistsError:
            if os.path.samefile(src, dst):  # a move cut short: finish it
                break
            if not no_replace:
                os.replace(src, dst)  # replacing was asked for; no hard-link dance helps
                fsync_dir(dst_dir)
                fsync_dir(src.parent)
                return dst
            n += 1
            dst = dst_dir / f"{src.name}.{n}"
            continue
        except OSError as exc:
            if exc.errno not in NO_LINK:
                raise
            # no hard links on this filesystem (FAT): check, then rename
            if no_replace and os.path.lexists(dst):
                n += 1
                dst = dst_dir / f"{src.name}.{n}"
                continue
            os.rename(src, dst)
            fsync_dir(dst_dir)
            fsync_dir(src.parent)
            return dst
        break
    fsync_dir(dst_dir)
    os.unlink(src)
    fsync_dir(src.parent)
    return dst


def move_all_durable(src_dir: Path, dst_dir: Path, names: list[str]) -> None:
    """Move several files between two directories with two fsyncs in all, in the order
    :func:`move_durable` explains: link every one into ``dst_dir``, fsync it, unlink
    every one from ``src_dir``, fsync that. A name already only in ``dst_dir`` (a move
    cut short and asked again) counts as moved; a different file under a ``dst_dir`` name
    is never replaced (FileExistsError)."""
    linked: list[str] = []
    for name in names:
        src, dst = src_dir / name, dst_dir / name
        try:
            os.link(src, dst)
        except FileNotFoundError:
            if os.path.lexists(dst) and not os.path.lexists(src):
                continue  # moved already
            raise
        except FileExistsError:
            if not os.path.samefile(src, dst):
                raise FileExistsError(f"{dst} exists and is not {src}; not replaced") from None
        except OSError as exc:
            if exc.errno not in NO_LINK:
                raise
            if os.path.lexists(dst):
                raise FileExistsError(f"{dst} exists; not replaced") from None
            os.rename(src, dst)  # FAT: no hard links, a rename is the best there is
            continue
        linked.append(name)
    fsync_dir(dst_dir)
    for name in linked:
        os.unlink(src_dir / name)
    fsync_dir(src_dir)


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
