"""The power-loss disk behind FUSE: one process per mount, controlled over a unix socket.

Run by :class:`hw_sim.powercut.PowerCutDisk` as
``python -m hw_sim.powercut_fs --backing B --mountpoint M --control SOCK --seed S``.
libfuse 3 (Debian's ``fuse3``) through mfusepy; single-threaded, so the model sees one
operation at a time in the order the kernel delivered them. The control socket speaks
one JSON object per line each way (see ``Control.handle`` for the verbs).

Why these FUSE choices:
- no ``direct_io``: SQLite maps its ``-shm`` wal-index with ``MAP_SHARED``, which FUSE
  supports only through the page cache;
- ``lock``/``flock`` are not implemented, so the kernel keeps POSIX and BSD locks
  itself (correct for processes on this host: SQLite's locks and the store's
  ``.lock`` work as on a local disk);
- ``hard_remove``: an unlinked open file is really unlinked (libfuse would otherwise
  rename it to ``.fuse_hidden…``, a name the store would then find after a cut);
- every file operation goes by its open handle, not by path, so an fsync of a file that
  was renamed or unlinked while open still reaches the right inode.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import mfusepy

from hw_sim.powercut_model import PowerCutModel, fs_error


class PowerCutOps(mfusepy.Operations):
    """FUSE operations over a :class:`PowerCutModel` (every call under ``lock``)."""

    use_ns = True

    def __init__(self, model: PowerCutModel, lock: threading.RLock,
                 now_ns: Callable[[], int] = time.time_ns) -> None:
        self.model = model
        self._mutex = lock
        self.now_ns = now_ns  # file mtimes only: a disk's own clock, nothing reads it
        self._fhs: dict[int, int] = {}
        self._next_fh = 1

    # -- handles ------------------------------------------------------------------
    def _handle(self, ino: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._fhs[fh] = ino
        self.model.open_count[ino] += 1
        return fh

    def _node(self, path: str | None, fh: int | None):
        if fh is not None and fh in self._fhs:
            node = self.model.nodes.get(self._fhs[fh])
            if node is not None:
                return node
        if path is None:
            raise fs_error(errno.EBADF)
        return self.model.lookup(path)

    def _drop(self, fh: int) -> None:
        ino = self._fhs.pop(fh, None)
        if ino is not None:
            self.model.open_count[ino] -= 1
            if self.model.open_count[ino] <= 0:
                del self.model.open_count[ino]

    def _check_live(self) -> None:
        if self.model.frozen is not None:
            raise fs_error(errno.EIO, "the disk has lost power")

    # -- metadata -----------------------------------------------------------------
    def getattr(self, path, fh=None):
        with self._mutex:
            self._check_live()
            return self.model.attrs(self._node(path, fh))

    def readdir(self, path, fh):
        with self._mutex:
            self._check_live()
            # With use_ino the kernel gets our inode numbers; glibc skips an entry whose
            # d_ino is 0, so every entry carries its inode (and its type).
            node = self.model.lookup(path)
            out = [(".", {"st_ino": node.ino, "st_mode": node.mode}, 0),
                   ("..", {"st_ino": 1, "st_mode": node.mode}, 0)]
            for name in self.model.readdir(path):
                child = self.model.lookup(f"{path.rstrip('/')}/{name}")
                out.append((name, {"st_ino": child.ino, "st_mode": child.mode}, 0))
            return out

    def opendir(self, path):
        with self._mutex:
            self._check_live()
            node = self.model.lookup(path)
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR, path)
            return self._handle(node.ino)

    def releasedir(self, path, fh):
        with self._mutex:
            self._drop(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self._mutex:
            self.model.fsyncdir(self._node(path, fh))
        return 0

    def statfs(self, path):
        st = os.statvfs(self.model.backing)
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                            "f_files", "f_ffree", "f_favail", "f_namemax")}

    def access(self, path, amode):
        with self._mutex:
            self._check_live()
            self.model.lookup(path)
        return 0

    def chmod(self, path, mode):
        with self._mutex:
            self._check_live()
            node = self.model.lookup(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        with self._mutex:
            self._check_live()
            node = self.model.lookup(path)
            node.mtime_ns = times[1] if times else self.now_ns()
        return 0

    # -- files ----------------------------------------------------------------------
    def open(self, path, flags):
        with self._mutex:
            self._check_live()
            node = self.model.lookup(path)
            if node.is_dir:
                raise fs_error(errno.EISDIR, path)
            return self._handle(node.ino)

    def create(self, path, mode, flags):
        with self._mutex:
            node = self.model.create(path, mode, self.now_ns(), exclusive=bool(flags & os.O_EXCL))
            return self._handle(node.ino)

    def read(self, path, size, offset, fh):
        with self._mutex:
            return self.model.read(self._node(path, fh), size, offset)

    def write(self, path, data, offset, fh):
        with self._mutex:
            return self.model.write(self._node(path, fh), data, offset, self.now_ns())

    def truncate(self, path, length, fh=None):
        with self._mutex:
            self.model.truncate(self._node(path, fh), length, self.now_ns())
        return 0

    def fallocate(self, path, mode, offset, size, fh):
        if mode != 0:
            raise fs_error(errno.EOPNOTSUPP, "only plain fallocate (mode 0)")
        with self._mutex:
            node = self._node(path, fh)
            if offset + size > node.data.size:
                self.model.truncate(node, offset + size, self.now_ns())
        return 0

    def fsync(self, path, datasync, fh):
        with self._mutex:
            self.model.fsync(self._node(path, fh))
        return 0

    def flush(self, path, fh):
        with self._mutex:
            self._check_live()
        return 0

    def release(self, path, fh):
        with self._mutex:
            self._drop(fh)
        return 0

    # -- names ----------------------------------------------------------------------
    def mkdir(self, path, mode):
        with self._mutex:
            self.model.mkdir(path, mode, self.now_ns())
        return 0

    def unlink(self, path):
        with self._mutex:
            self.model.unlink(path)
        return 0

    def rmdir(self, path):
        with self._mutex:
            self.model.rmdir(path)
        return 0

    def rename(self, old, new):
        with self._mutex:
            self.model.rename(old, new)
        return 0

    def link(self, target, source):
        """mfusepy's order: ``target`` is the new name, ``source`` the existing file."""
        with self._mutex:
            self.model.link(source, target)
        return 0

    def destroy(self, path):
        """Unmount: a clean unmount syncs everything; after a cut the image is written."""
        with self._mutex:
            if self.model.frozen is None:
                self.model.sync_all()
                self.model.materialize()


class Control:
    """The test's hand on the disk: cuts, faults, counters (one JSON line per request)."""

    def __init__(self, model: PowerCutModel, lock: threading.RLock, ops: PowerCutOps) -> None:
        self.model = model
        self._mutex = lock
        self.ops = ops
        self.kill_pids: set[int] = set()
        self.cut_event = threading.Event()
        model.on_cut = self._on_cut

    def _on_cut(self, report) -> None:
        # Power is gone for the CPU too: the writer stops at the instant of the cut,
        # before this operation's reply could tell it anything.
        for pid in sorted(self.kill_pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.cut_event.set()

    def _checkpoint(self) -> dict:
        """A clean shutdown and reboot without unmounting: everything becomes durable, the
        backing directory gets the image, and the disk starts over from it (counters,
        faults and arming cleared). Refused while files are open: their handles would
        name inodes of the old model. The visible tree is the same before and after, so
        the kernel's caches stay true.

        The kernel sends RELEASE after close(2) has returned, so handles a closed file
        still holds are waited for (briefly) before refusing."""
        deadline = time.monotonic() + 5.0
        while True:
            with self._mutex:
                if self.model.frozen is not None:
                    raise RuntimeError("the disk has lost power; unmount and mount it again")
                if not self.ops._fhs:
                    m = self.model
                    m.sync_all()
                    m.materialize()
                    removed = list(m.removed)
                    m.reset()
                    return {"removed": removed}
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(self.ops._fhs)} files or directories are open; "
                                       "close them first")
            time.sleep(0.01)

    def handle(self, req: dict) -> dict:
        verb = req.get("op")
        m = self.model
        if verb == "checkpoint":
            return self._checkpoint()
        if verb == "wait_cut":  # outside the lock: it blocks
            self.cut_event.wait(float(req.get("timeout", 0)))
            with self._mutex:
                return {"cut": m.frozen.as_dict() if m.frozen else None}
        with self._mutex:
            if verb == "ping":
                return {"pid": os.getpid()}
            if verb == "status":
                return m.status()
            if verb == "cut":
                return {"cut": m.cut(req.get("mode", "torn")).as_dict()}
            if verb == "arm_cut_at_op":
                m.arm_cut_at_op(int(req["n"]), req.get("mode", "torn"))
                return {}
            if verb == "arm_cut_after_barrier":
                m.arm_cut_after_barrier(int(req["k"]), req.get("mode", "barrier"))
                return {}
            if verb == "arm_cut_on":
                m.arm_cut_on(req["kind"], req["pattern"], n=int(req.get("n", 1)),
                             mode=req.get("mode", "torn"), after=bool(req.get("after", False)))
                return {}
            if verb == "fail_nth":
                count = req.get("count")
                m.fail_nth(req["kind"], int(req["n"]), int(req["err"]),
                           None if count is None else int(count))
                return {}
            if verb == "clear_faults":
                m.clear_faults()
                return {}
            if verb == "removed":
                return {"removed": list(m.removed)}
            if verb == "kill_on_cut":
                self.kill_pids.update(int(p) for p in req.get("pids", []))
                return {}
        raise ValueError(f"unknown control verb {verb!r}")


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        control: Control = self.server.control  # type: ignore[attr-defined]
        for line in self.rfile:
            try:
                reply = {"ok": True, **control.handle(json.loads(line))}
            except Exception as exc:  # noqa: BLE001 — every error goes back to the caller, named
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(backing: Path, mountpoint: Path, control_path: Path, seed: int, debug: bool = False) -> int:
    model = PowerCutModel(backing, seed=seed)
    lock = threading.RLock()
    ops = PowerCutOps(model, lock)
    control = Control(model, lock, ops)
    if control_path.exists():
        control_path.unlink()
    server = _Server(str(control_path), _Handler)
    server.control = control  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                     name="powercut-control", daemon=True).start()
    try:
        mfusepy.FUSE(ops, str(mountpoint), foreground=True, nothreads=True,
                     debug=debug, fsname="bwv-powercut", subtype="powercut", hard_remove=True,
                     use_ino=True)
    finally:
        server.shutdown()
        server.server_close()
        try:
            control_path.unlink()
        except FileNotFoundError:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw_sim.powercut_fs",
                                 description="a FUSE disk that loses unsynced writes at a power cut")
    ap.add_argument("--backing", required=True, type=Path)
    ap.add_argument("--mountpoint", required=True, type=Path)
    ap.add_argument("--control", required=True, type=Path, help="unix socket for the controller")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--debug", action="store_true", help="libfuse's request trace on stderr")
    args = ap.parse_args(argv)
    if not args.backing.is_dir():
        print(f"powercut_fs: error: backing directory {args.backing} does not exist", file=sys.stderr)
        return 2
    return serve(args.backing, args.mountpoint, args.control, args.seed, args.debug)


if __name__ == "__main__":
    sys.exit(main())
