"""Open a tar that nobody has vouched for yet (a firmware bundle, an offline update
archive) without letting its headers size our reads.

``tarfile`` reads a GNU long-name or PAX extended header by asking the file for as
many bytes as the header claims. A header that claims 2**70 bytes makes the read raise
``OverflowError``; one that claims a few hundred GiB makes CPython try to allocate that
much before reading a byte. The fuzzer found the first. Every read here is capped at
what is left of the file, so a lying header costs at most the file's own size and ends
in tarfile's usual "unexpected end of data" (a ``TarError``).
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

# What reading a hostile tar may raise besides a clean TarError: a header field that
# does not parse as a number or name (ValueError, UnicodeDecodeError from PAX), data cut
# short (EOFError), and an offset too large for the platform (OverflowError).
TAR_FAILURES = (tarfile.TarError, EOFError, OverflowError, ValueError, UnicodeDecodeError)


class _BoundedFile(io.RawIOBase):
    """A read-only file whose ``read(n)`` never asks for more than the bytes left."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 — closed by close(), owned by the TarFile
        self._size = os.fstat(self._f.fileno()).st_size
        self.name = str(path)
        self.mode = "rb"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self._size - self._f.tell())
        if n is None or n < 0 or n > left:
            n = left
        return self._f.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _OwningTarFile(tarfile.TarFile):
    """A TarFile that closes the bounded file it was opened on (tarfile leaves a
    caller's ``fileobj`` open)."""

    _bounded: _BoundedFile | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._bounded is not None:
                self._bounded.close()


def open_untrusted_tar(path: Path) -> tarfile.TarFile:
    """``tarfile.open(path, "r:")`` with bounded reads. Raises ``FileNotFoundError``
    and other ``OSError`` as they are, and one of ``TAR_FAILURES`` for a bad tar."""
    f = _BoundedFile(Path(path))
    try:
        tar = _OwningTarFile.open(fileobj=f, mode="r:")
    except BaseException:
        f.close()
        raise
    tar._bounded = f
    return tar
