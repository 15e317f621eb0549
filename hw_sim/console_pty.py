"""A null-modem cable made of two ptys: the simulator's USB serial console.

On the camera the console is a USB CDC-ACM gadget (``/dev/ttyGS0``) and the technician's
laptop sees ``/dev/ttyACM0``: two serial devices joined by a cable. Here two pty pairs
play those two ends, and a relay thread copies bytes between their masters (what
``socat pty,link=… pty,link=…`` does). Both sides open a real tty path with pyserial,
exactly as on hardware.

Like a real cable, the link outlives either side: the technician can close the port
(pull the cable) and open it again, and the camera's side never notices except that no
more bytes come. Bytes sent while nobody listens are buffered up to ``max_pending``
bytes per direction, then dropped (a serial line keeps nothing for an absent reader).

Example::

    link = PtyLink(link_dir=workdir)          # workdir/console -> the technician's end
    device = serial.Serial(link.device_path)  # the camera's end
    client = serial.Serial(link.client_path)
    link.close()
"""
from __future__ import annotations

import errno
import os
import select
import shutil
import tempfile
import threading
import tty
from pathlib import Path
from typing import Self


class PtyLink:
    def __init__(self, *, link_dir: str | os.PathLike | None = None, name: str = "console",
                 max_pending: int = 1 << 20) -> None:
        self.max_pending = max_pending
        self.dropped = 0
        self._fds: list[int] = []
        ends = []
        for _ in range(2):
            master, slave = os.openpty()
            # Raw from the start (no echo, no line editing), as a UART; pyserial sets the
            # same when it opens, but bytes may arrive before that. Keeping our own slave
            # fd open means a side closing its port never hangs up the master.
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._fds += [master, slave]
            ends.append((master, os.ttyname(slave)))
        (self._dev_master, self.device_path), (self._cli_master, self.client_path) = ends
        self._own_dir = link_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="bwv-console-") if link_dir is None else link_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        #: A stable path for the technician's end (a symlink to :attr:`client_path`).
        self.client_link = str(self._dir / name)
        tmp = self.client_link + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(self.client_path, tmp)
        os.replace(tmp, self.client_link)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._relay, name="bwv-console-pty", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        pending = {self._dev_master: bytearray(), self._cli_master: bytearray()}  # bytes *to* fd
        peer = {self._dev_master: self._cli_master, self._cli_master: self._dev_master}
        while not self._stop:
            writers = [fd for fd, buf in pending.items() if buf]
            try:
                readable, writable, _ = select.select(
                    [self._dev_master, self._cli_master, self._wake_r], writers, [], 0.5)
            except (OSError, ValueError):
                return
            for fd in readable:
                if fd == self._wake_r:
                    continue
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        continue
                    return
                buf = pending[peer[fd]]
                buf += data
                if len(buf) > self.max_pending:
                    over = len(buf) - self.max_pending
                    del buf[:over]
                    self.dropped += over
            for fd in writable:
                buf = pending[fd]
                try:
                    n = os.write(fd, buf)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                del buf[:n]

    def close(self) -> None:
        """Stop the relay and remove both ptys and the link. Safe to call twice."""
        if self._stop:
            return
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for fd in (*self._fds, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if os.path.lexists(self.client_link):
            os.unlink(self.client_link)
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
