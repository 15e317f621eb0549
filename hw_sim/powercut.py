"""A disk that loses power: the test's handle on the power-cut FUSE filesystem.

::

    with PowerCutDisk(backing, mountpoint, seed=7) as disk:   # mounts
        disk.kill_on_cut(writer.pid)        # the CPU dies with the disk
        disk.arm_cut_at_op(120, "torn")     # or arm_cut_after_barrier(k), or cut("prefix") now
        writer.wait()
        report = disk.wait_cut(5)           # what the cut lost
    # unmounted; ``backing`` holds exactly what survived

The model (what is durable when, and the three cut modes) is described in
``hw_sim/powercut_model.py``; docs/RELIABILITY.md has the fault model. The filesystem
runs in its own process (``hw_sim/powercut_fs.py``), so a writer killed at the cut, or a
test that crashes, never takes the disk's state with it.

Where ``/dev/fuse`` is missing, mounting raises :class:`PowerCutUnavailable`: callers fail
rather than pass silently (the issue's rule for CI).
"""
from __future__ import annotations

import ctypes.util
import errno
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hw_sim.powercut_model import CUT_MODES, FAULT_KINDS

FUSE_DEVICE = Path("/dev/fuse")
ERRNOS = {"EIO": errno.EIO, "ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS, "EDQUOT": errno.EDQUOT}


class PowerCutError(Exception):
    """The power-cut disk could not do what was asked; the message says what."""


class PowerCutUnavailable(PowerCutError):
    """This machine cannot run the power-cut disk (no /dev/fuse, no libfuse 3)."""


def refuse_without_fuse(campaign: str, json_out, empty: dict) -> int | None:
    """A campaign without FUSE fails loudly (exit 2) rather than passing silently; the
    reason also goes into its JSON summary. None when FUSE is usable."""
    reason = fuse_available()
    if reason is None:
        return None
    msg = f"{campaign} cannot run: {reason}"
    print(f"error: {msg}", file=sys.stderr)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"error": msg, **empty}, indent=2) + "\n")
    return 2


def fuse_available() -> str | None:
    """None when FUSE can be used here, else the reason it cannot."""
    if not FUSE_DEVICE.exists():
        return (f"{FUSE_DEVICE} is missing: the power-loss filesystem needs FUSE "
                "(run with --device /dev/fuse --cap-add SYS_ADMIN in a container, or load the fuse module)")
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        return f"{FUSE_DEVICE} is not readable and writable by this user"
    try:
        import mfusepy  # noqa: F401 — loads libfuse3 through ctypes
    except (ImportError, OSError, EnvironmentError) as exc:
        return f"libfuse 3 / mfusepy cannot be loaded ({exc}); install Debian's fuse3 and the test extras"
    return None


def is_mounted(path: Path) -> bool:
    """From the kernel's mount table, not by stat: a disk that lost power answers every
    stat with EIO, and ``os.path.ismount`` would then say "not mounted"."""
    target = os.path.abspath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            mnt = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            if mnt.replace("\\134", "\\") == target:
                return True
    return False


class PowerCutDisk:
    """Mount a power-loss filesystem over ``backing`` at ``mountpoint`` (a context manager)."""

    def __init__(self, backing: Path, mountpoint: Path, *, seed: int = 0,
                 control: Path | None = None, debug_log: Path | None = None) -> None:
        self.backing = Path(backing).resolve()
        self.mountpoint = Path(mountpoint).absolute()
        self.seed = seed
        self._tmp: str | None = None
        self._own_control = control is None  # unix socket paths are short: then one in /tmp
        self.control = Path(control) if control else Path()
        self.debug_log = debug_log
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._rfile = None
        self._stderr_path: Path | None = None

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "PowerCutDisk":
        self.mount()
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()

    @property
    def mounted(self) -> bool:
        return self._proc is not None

    def mount(self, timeout: float = 20.0) -> None:
        reason = fuse_available()
        if reason:
            raise PowerCutUnavailable(reason)
        if self._proc is not None:
            raise PowerCutError(f"{self.mountpoint} is mounted already")
        if not self.backing.is_dir():
            raise PowerCutError(f"backing directory {self.backing} does not exist")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if is_mounted(self.mountpoint):
            raise PowerCutError(f"{self.mountpoint} is a mount point already (a stale power-cut "
                                f"mount? fusermount3 -u {self.mountpoint})")
        if self._own_control:
            self._tmp = tempfile.mkdtemp(prefix="bwv-pc-")
            self.control = Path(self._tmp) / "ctl"
        fd, err_path = tempfile.mkstemp(prefix="bwv-pc-", suffix=".stderr")
        self._stderr_path = Path(err_path)
        root = Path(__file__).resolve().parent.parent
        cmd = [sys.executable, "-m", "hw_sim.powercut_fs", "--backing", str(self.backing),
               "--mountpoint", str(self.mountpoint), "--control", str(self.control),
               "--seed", str(self.seed)]
        if self.debug_log:
            cmd.append("--debug")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p))
        lib = _libfuse_path()
        if lib and "FUSE_LIBRARY_PATH" not in env:
            env["FUSE_LIBRARY_PATH"] = lib  # spares mfusepy a find_library (ldconfig) per mount
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fd, env=env,
                                      start_new_session=True)
        os.close(fd)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                msg = self._stderr_tail()
                self._proc = None
                self._cleanup_tmp()
                raise PowerCutError(f"the power-cut filesystem exited while mounting "
                                    f"{self.mountpoint}: {msg or 'no message'}")
            if is_mounted(self.mountpoint) and self.control.exists():
                try:
                    self._connect()
                    self._call({"op": "ping"})
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                msg = self._stderr_tail()
                self._force_stop()
                self._cleanup_tmp()
                raise PowerCutError(f"the power-cut filesystem did not mount {self.mountpoint} "
                                    f"within {timeout:.0f} s: {msg}")
            time.sleep(0.02)

    def _connect(self) -> None:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(self.control))
            self._sock, self._rfile = s, s.makefile("rb")

    def _stderr_tail(self) -> str:
        try:
            text = self._stderr_path.read_text(errors="replace") if self._stderr_path else ""
        except OSError:
            return ""
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return " | ".join(lines[-3:])

    def unmount(self, timeout: float = 30.0) -> None:
        """Unmount (a clean unmount makes everything durable; after a cut, the image is
        what survived) and wait for the filesystem process. Idempotent."""
        if self._proc is None:
            self._cleanup_tmp()
            return
        if self._sock is not None:
            self._sock.close()
            self._sock = self._rfile = None
        deadline = time.monotonic() + timeout
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        while is_mounted(self.mountpoint) and self._proc.poll() is None:
            cmd = [tool, "-u", "-q", str(self.mountpoint)] if tool else ["umount", str(self.mountpoint)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:  # still busy: detach it, the process exits
                subprocess.run([tool, "-u", "-z", "-q", str(self.mountpoint)] if tool
                               else ["umount", "-l", str(self.mountpoint)], capture_output=True)
                break
            time.sleep(0.05)
        try:
            rc = self._proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            msg = self._stderr_tail()
            self._force_stop()
            self._cleanup_tmp()
            raise PowerCutError(f"the power-cut filesystem at {self.mountpoint} did not stop; "
                                f"killed it (its image may be stale): {msg}") from None
        proc, self._proc = self._proc, None
        msg = self._stderr_tail() if rc != 0 else ""
        self._cleanup_tmp()
        if rc != 0:
            raise PowerCutError(f"the power-cut filesystem exited with status {rc} "
                                f"(pid {proc.pid}): {msg}")

    def _force_stop(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, 9)
            except ProcessLookupError:
                pass
            self._proc.wait()
            self._proc = None
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        if tool and is_mounted(self.mountpoint):
            subprocess.run([tool, "-u", "-z", "-q", str(self.mountpoint)], capture_output=True)

    def _cleanup_tmp(self) -> None:
        if self._stderr_path is not None:
            self._stderr_path.unlink(missing_ok=True)
            self._stderr_path = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # ------------------------------------------------------------------ control
    def _call(self, req: dict) -> dict:
        if self._proc is None:
            raise PowerCutError("the power-cut disk is not mounted")
        self._connect()
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        line = self._rfile.readline()
        if not line:
            raise PowerCutError(f"the power-cut filesystem closed its control socket: {self._stderr_tail()}")
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise PowerCutError(f"power-cut disk refused {req.get('op')}: {reply.get('error')}")
        return reply

    def status(self) -> dict:
        """Operations counted so far, barriers, pending operations, the cut (if any), faults."""
        return self._call({"op": "status"})

    def barriers(self) -> int:
        return self.status()["barriers"]

    def op_counts(self) -> dict[str, int]:
        return self.status()["counts"]

    def ops(self) -> int:
        return self.status()["ops"]

    def cut(self, mode: str = "torn") -> dict:
        """Power cut now: what was pending meets ``mode``'s fate; the disk is frozen (every
        later operation fails with EIO) and ``backing`` holds the surviving image."""
        _check_mode(mode)
        return self._call({"op": "cut", "mode": mode})["cut"]

    def arm_cut_at_op(self, n: int, mode: str = "torn") -> None:
        """Cut just before the n-th counted operation since mount (that one fails)."""
        _check_mode(mode)
        self._call({"op": "arm_cut_at_op", "n": n, "mode": mode})

    def arm_cut_after_barrier(self, k: int, mode: str = "barrier") -> None:
        """Cut right after the k-th durability barrier (fsync of a file or a directory):
        everything up to it is durable, nothing after it (with mode ``barrier``)."""
        _check_mode(mode)
        self._call({"op": "arm_cut_after_barrier", "k": k, "mode": mode})

    def arm_cut_on(self, op: str, pattern: str, *, n: int = 1, mode: str = "torn",
                   after: bool = False) -> None:
        """Cut at the n-th ``op`` (write, fsync, fsyncdir, rename…) on a path matching the
        fnmatch ``pattern`` (relative to the mount): before it runs, or right ``after``
        it. Pins a cut to a moment of a protocol, whatever the operation numbers are."""
        _check_mode(mode)
        self._call({"op": "arm_cut_on", "kind": op, "pattern": pattern, "n": n, "mode": mode,
                    "after": after})

    def wait_cut(self, timeout: float) -> dict | None:
        """The cut's report once one happened (armed or called), or None after ``timeout``."""
        return self._call({"op": "wait_cut", "timeout": timeout})["cut"]

    def kill_on_cut(self, *pids: int) -> None:
        """SIGKILL these processes at the instant of a cut (the CPU loses power too)."""
        self._call({"op": "kill_on_cut", "pids": list(pids)})

    def fail_nth(self, op: str, n: int, err: int | str, *, count: int | None = None) -> None:
        """From the n-th next ``op`` on (1 = the very next), fail with ``err`` (EIO,
        ENOSPC…): ``count`` times, or until :meth:`clear_faults` when None.

        ``op`` is one of write, truncate, create, mkdir, unlink, rmdir, rename, link,
        fsync, fsyncdir, read, ``sync`` (fsync or fsyncdir) or ``any`` (every counted op).
        A failed operation changes nothing.
        """
        if op not in FAULT_KINDS:
            raise ValueError(f"unknown operation {op!r}; one of {', '.join(FAULT_KINDS)}")
        code = ERRNOS.get(err, err) if isinstance(err, str) else err
        if not isinstance(code, int):
            raise ValueError(f"unknown errno {err!r}; one of {', '.join(ERRNOS)}")
        self._call({"op": "fail_nth", "kind": op, "n": n, "err": code, "count": count})

    def clear_faults(self) -> None:
        self._call({"op": "clear_faults"})

    def checkpoint(self) -> list[str]:
        """A clean stop and restart of the disk without unmounting (no file may be open):
        everything becomes durable, ``backing`` holds it, counters start over. Returns
        the files removed since mount or the last checkpoint (see :meth:`removed`)."""
        return self._call({"op": "checkpoint"})["removed"]

    def removed(self) -> list[str]:
        """Files (paths relative to the mount) the writers unlinked or replaced by rename:
        deletions the software asked for, as opposed to losses the cut caused."""
        return self._call({"op": "removed"})["removed"]


@functools.lru_cache(maxsize=1)
def _libfuse_path() -> str | None:
    return ctypes.util.find_library("fuse3")


def _check_mode(mode: str) -> None:
    if mode not in CUT_MODES:
        raise ValueError(f"unknown cut mode {mode!r}; one of {', '.join(CUT_MODES)}")
