"""The power-loss disk's model: what a write-back cache holds, what a flush makes durable.

This is the pure-Python half of the power-cut filesystem (``hw_sim/powercut_fs.py`` puts
it behind FUSE). It keeps two views of one tree:

- the *volatile* view: what a running program sees (every write, rename, unlink so far);
- the *durable* view: what survives a power cut. A file's data joins it only when the file
  is fsynced (``fsync``/``fdatasync``); a directory's entries (create, rename, unlink,
  mkdir, rmdir, link) only when that directory is fsynced. Each directory is its own
  block: a rename between two directories is two entry changes, durable one directory
  at a time (as on FAT/exFAT, and as POSIX promises; stricter than ext4's journal).

Everything done since a file's or directory's last fsync is in ``pending``, in order. A
power cut (``cut``) decides which pending operations reached the medium anyway:

``torn``
    each unsynced 4 KiB page of each file survives or not (coin flip, pages
    independent), a file's size is its durable or its volatile size, and each
    directory's block is written whole or not at all;
``prefix``
    a random in-order prefix of all pending operations survives (a cache that writes
    back in order, cut part-way);
``barrier``
    nothing pending survives (a cut right after the last durability barrier).

A cut always loses *something* when something is pending (``torn`` drops at least one
page or directory block, ``prefix`` at least the last operation): a cut that loses
nothing is the same as a cut a moment later, which another seed covers. That is what
makes a writer that skips an fsync fail in every cut, not in half of them.

The durable view lives in memory while mounted; the backing directory holds the image
as of the mount and is rewritten once, at a cut or at unmount (``materialize``). Files
nobody changes are read from (and later hard-linked back into) the backing directory,
so a large store costs no memory until it is written.

Files whose names end in a *scratch* suffix (SQLite's ``-shm`` wal-index, which the
kernel writes back through mmap at moments of its own choosing and which SQLite rebuilds
after a crash) are never counted as operations, never faulted and never durable.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import random
import shutil
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PAGE = 4096
ROOT_INO = 1
CUT_MODES = ("torn", "prefix", "barrier")
#: Operations counted (and faultable, and able to trigger an armed cut), in the order a
#: storage stack sees them. ``read`` is faultable but not counted in ``any``.
OP_KINDS = ("write", "truncate", "create", "mkdir", "unlink", "rmdir", "rename", "link",
            "fsync", "fsyncdir")
FAULT_KINDS = OP_KINDS + ("read", "sync", "any")
SCRATCH_SUFFIXES = ("-shm",)


def fs_error(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


class FileData:
    """A regular file's bytes as 4 KiB pages over an immutable base file.

    ``pages`` hold whole pages (bytes beyond ``size`` are zero); a page not in ``pages``
    comes from the base file below ``base_len``, else it is zeros. ``copy`` is cheap
    (pages are immutable ``bytes``), which is what makes an fsync a snapshot.
    """

    __slots__ = ("base", "base_len", "size", "pages")

    def __init__(self, base: str | None = None, size: int = 0) -> None:
        self.base = base
        self.base_len = size if base else 0
        self.size = size
        self.pages: dict[int, bytes] = {}

    def copy(self) -> "FileData":
        c = FileData.__new__(FileData)
        c.base, c.base_len, c.size, c.pages = self.base, self.base_len, self.size, dict(self.pages)
        return c

    def page(self, i: int, reader: "BaseReader") -> bytes:
        got = self.pages.get(i)
        if got is not None:
            return got
        start = i * PAGE
        if self.base is None or start >= self.base_len:
            return bytes(PAGE)
        raw = reader.pread(self.base, min(PAGE, self.base_len - start), start)
        return raw + bytes(PAGE - len(raw))

    def read(self, offset: int, size: int, reader: "BaseReader") -> bytes:
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        out = bytearray()
        for i in range(offset // PAGE, (end - 1) // PAGE + 1):
            out += self.page(i, reader)
        skip = offset - (offset // PAGE) * PAGE
        return bytes(out[skip: skip + end - offset])

    def write(self, offset: int, data: bytes, reader: "BaseReader") -> None:
        pos, view = offset, memoryview(data)
        while view:
            i, within = divmod(pos, PAGE)
            n = min(PAGE - within, len(view))
            if within == 0 and n == PAGE:
                self.pages[i] = bytes(view[:n])
            else:
                page = bytearray(self.page(i, reader))
                page[within:within + n] = view[:n]
                self.pages[i] = bytes(page)
            pos += n
            view = view[n:]
        self.size = max(self.size, offset + len(data))

    def truncate(self, size: int, reader: "BaseReader") -> None:
        if size < self.size:
            last, within = divmod(size, PAGE)
            if within:
                page = self.page(last, reader)
                self.pages[last] = page[:within] + bytes(PAGE - within)
            for i in [i for i in self.pages if i * PAGE >= size]:
                del self.pages[i]
            self.base_len = min(self.base_len, size)
        self.size = size

    def is_pure_base(self, reader: "BaseReader") -> bool:
        """Unchanged since mount: the backing file can be linked back as it is."""
        return (self.base is not None and not self.pages and self.size == self.base_len
                and reader.size(self.base) == self.size)


class BaseReader:
    """Reads base files by path, keeping a few descriptors open (backing is immutable
    while mounted)."""

    def __init__(self, limit: int = 64) -> None:
        self._fds: dict[str, int] = {}
        self._limit = limit

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= self._limit:
                self.close()
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def pread(self, path: str, n: int, offset: int) -> bytes:
        return os.pread(self._fd(path), n, offset)

    def size(self, path: str) -> int:
        return os.fstat(self._fd(path)).st_size

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


@dataclass
class Node:
    ino: int
    is_dir: bool
    mode: int
    data: FileData | None = None              # files
    entries: dict[str, int] | None = None     # dirs; None = not loaded from the backing yet
    origin: str | None = None                 # backing path at mount (lazily loaded dirs)
    nlink: int = 0
    mtime_ns: int = 0
    scratch: bool = False


@dataclass(frozen=True)
class Op:
    """One pending (not yet durable) change: data of a file, or an entry of a directory."""

    kind: str              # "write" | "truncate" | "entry"
    ino: int               # the file (data ops) or the directory (entry ops)
    offset: int = 0        # write offset / truncate size
    data: bytes = b""
    # entry ops: (name, inode it now names or None for removed) — one directory block
    # update, so a rename within a directory is a single op holding two changes
    changes: tuple[tuple[str, int | None], ...] = ()


@dataclass
class Fault:
    kind: str
    n: int                 # the n-th matching operation (1 = the next one) starts failing
    err: int
    count: int | None      # how many operations fail (None: until cleared)
    seen: int = 0
    failed: int = 0

    def matches(self, kind: str) -> bool:
        if self.kind == kind:
            return True
        if self.kind == "sync":
            return kind in ("fsync", "fsyncdir")
        return self.kind == "any" and kind in OP_KINDS


@dataclass
class ArmOn:
    kind: str
    pattern: str
    n: int
    mode: str
    after: bool
    seen: int = 0


@dataclass
class CutReport:
    mode: str
    at_op: int
    barriers: int
    pending_ops: int
    surviving_ops: int = 0
    lost_pages: dict[str, int] = field(default_factory=dict)   # path -> pages lost
    lost_sizes: dict[str, list[int]] = field(default_factory=dict)  # path -> [volatile, kept]
    lost_dirs: list[str] = field(default_factory=list)          # directories whose block was lost
    lost_entries: list[str] = field(default_factory=list)       # names whose change was lost

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def lost_anything(self) -> bool:
        return bool(self.lost_pages or self.lost_sizes or self.lost_dirs or self.lost_entries)


class PowerCutModel:
    """Volatile and durable trees over a backing directory. Not thread-safe: the FUSE
    adapter holds one lock around every call."""

    def __init__(self, backing: Path, *, seed: int = 0,
                 scratch_suffixes: tuple[str, ...] = SCRATCH_SUFFIXES) -> None:
        self.backing = Path(backing)
        if not self.backing.is_dir():
            raise FileNotFoundError(f"backing directory {self.backing} does not exist")
        self.seed = seed
        self.scratch_suffixes = scratch_suffixes
        self.on_cut = None  # callback(CutReport) run right after a cut (kill the writer)
        self.reset()

    def reset(self) -> None:
        """Start over from the backing directory as it is now (mount, or a checkpoint)."""
        self.reader = BaseReader()
        self.nodes: dict[int, Node] = {}
        self.dur_data: dict[int, FileData] = {}
        self.dur_entries: dict[int, dict[str, int]] = {}
        self.pending: list[Op] = []
        self._next_ino = ROOT_INO
        self._base_ids: dict[tuple[int, int], int] = {}
        root = self._new_node(True, stat.S_IFDIR | (os.stat(self.backing).st_mode & 0o7777))
        root.origin, root.nlink = str(self.backing), 2
        # counters
        self.op_no = 0
        self.counts: Counter[str] = Counter()
        self.barriers = 0
        self.removed: list[str] = []          # files the writer unlinked or replaced
        self.faults: list[Fault] = []
        self.frozen: CutReport | None = None
        self._arm_at_op: tuple[int, str] | None = None
        self._arm_after_barrier: tuple[int, str] | None = None
        self._arm_on: ArmOn | None = None
        self._cut_next: str | None = None
        self._cuts = 0
        self._removals_since_gc = 0
        self.open_count: Counter[int] = Counter()  # inodes held open (the adapter counts)

    # ------------------------------------------------------------------ nodes
    def _new_node(self, is_dir: bool, mode: int) -> Node:
        ino = self._next_ino
        self._next_ino += 1
        node = Node(ino, is_dir, mode, mtime_ns=0)
        if is_dir:
            node.entries = None
        self.nodes[ino] = node
        return node

    def _is_scratch_name(self, name: str) -> bool:
        return name.endswith(self.scratch_suffixes)

    def _load(self, node: Node) -> dict[str, int]:
        """A directory's entries, read from the backing directory on first use."""
        if node.entries is not None:
            return node.entries
        entries: dict[str, int] = {}
        base = node.origin
        if base is not None:
            for name in sorted(os.listdir(base)):
                path = os.path.join(base, name)
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    child = self._new_node(True, st.st_mode)
                    child.origin, child.nlink, child.mtime_ns = path, 2, st.st_mtime_ns
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in self._base_ids:  # a hard link to a file loaded already
                        child = self.nodes[self._base_ids[key]]
                    else:
                        child = self._new_node(False, st.st_mode)
                        child.data = FileData(path, st.st_size)
                        child.mtime_ns = st.st_mtime_ns
                        child.scratch = self._is_scratch_name(name)
                        self.dur_data[child.ino] = child.data.copy()
                        self._base_ids[key] = child.ino
                    child.nlink += 1
                else:
                    continue  # symlinks, devices: a store holds none
                entries[name] = child.ino
        node.entries = entries
        self.dur_entries[node.ino] = dict(entries)
        return entries

    def lookup(self, path: str) -> Node:
        node = self.nodes[ROOT_INO]
        for part in (p for p in path.split("/") if p):
            if not node.is_dir:
                raise fs_error(errno.ENOTDIR, path)
            ino = self._load(node).get(part)
            if ino is None:
                raise fs_error(errno.ENOENT, path)
            node = self.nodes[ino]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        if not name:
            raise fs_error(errno.EINVAL, path)
        parent = self.lookup(head or "/")
        if not parent.is_dir:
            raise fs_error(errno.ENOTDIR, path)
        self._load(parent)
        return parent, name

    # ----------------------------------------------------------- op accounting
    def begin(self, kind: str, *, scratch: bool = False, node: Node | None = None,
              path: str | None = None) -> None:
        """Every operation enters here: frozen disk, armed cut, injected fault. ``node`` or
        ``path`` name what it acts on (for cuts armed on a path)."""
        if self.frozen is not None:
            raise fs_error(errno.EIO, "the disk has lost power")
        if kind == "read":
            # Never on a scratch file (the module doc): a card never reads SQLite's
            # wal-index back (SQLite truncates it at first open and keeps it in shared
            # memory); FUSE, which drops a file's cached pages at each open, would, and
            # an injected EIO there is a SIGBUS in SQLite's mmap, a fault no card causes.
            if not scratch:
                self._fault("read")
            return
        if scratch:
            return
        if self._cut_next is not None:
            self.cut(self._cut_next)
            raise fs_error(errno.EIO, "the disk has lost power")
        if self._arm_at_op is not None and self.op_no + 1 >= self._arm_at_op[0]:
            self.cut(self._arm_at_op[1])
            raise fs_error(errno.EIO, "the disk has lost power")
        if self._arm_on is not None and (self._arm_on.kind == kind or (
                self._arm_on.kind == "sync" and kind in ("fsync", "fsyncdir"))):
            arm = self._arm_on
            where = path.lstrip("/") if path is not None else self._path_of(node)
            if where is not None and fnmatch.fnmatchcase(where, arm.pattern):
                arm.seen += 1
                if arm.seen >= arm.n:
                    self._arm_on = None
                    if not arm.after:
                        self.cut(arm.mode)
                        raise fs_error(errno.EIO, "the disk has lost power")
                    self._cut_next = arm.mode  # this one completes; the next one meets the cut
        self.op_no += 1
        self.counts[kind] += 1
        self._fault(kind)

    def _path_of(self, node: Node | None) -> str | None:
        if node is None:
            return None
        found = self.paths().get(node.ino)
        return found.lstrip("/") if found is not None else None

    def _fault(self, kind: str) -> None:
        for f in self.faults:
            if not f.matches(kind):
                continue
            f.seen += 1
            if f.seen >= f.n and (f.count is None or f.failed < f.count):
                f.failed += 1
                raise fs_error(f.err, f"injected fault on {kind} #{f.seen}")

    def _barrier_done(self) -> None:
        self.barriers += 1
        if self._arm_after_barrier is not None and self.barriers >= self._arm_after_barrier[0]:
            self._cut_next = self._arm_after_barrier[1]
            self._arm_after_barrier = None

    # ---------------------------------------------------------------- control
    def fail_nth(self, kind: str, n: int, err: int, count: int | None = None) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown operation {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if n < 1:
            raise ValueError("n counts from 1 (the next matching operation)")
        if err not in (errno.EIO, errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            raise ValueError(f"errno {err} is not a storage error this disk injects "
                             "(EIO, ENOSPC, EROFS, EDQUOT)")
        self.faults.append(Fault(kind, n, err, count))

    def clear_faults(self) -> None:
        self.faults.clear()

    def arm_cut_at_op(self, n: int, mode: str) -> None:
        """Cut just before the n-th counted operation since mount (which then fails)."""
        _check_mode(mode)
        self._arm_at_op = (n, mode)

    def arm_cut_after_barrier(self, k: int, mode: str = "barrier") -> None:
        """Cut at the first operation after the k-th barrier (fsync/fsyncdir) completes."""
        _check_mode(mode)
        if k < 1:
            raise ValueError("k counts barriers from 1")
        if self.barriers >= k:
            self._cut_next = mode
        else:
            self._arm_after_barrier = (k, mode)

    def arm_cut_on(self, kind: str, pattern: str, *, n: int = 1, mode: str = "torn",
                   after: bool = False) -> None:
        """Cut at the n-th ``kind`` operation on a path matching ``pattern`` (fnmatch,
        relative to the mount root): before it runs (it fails), or with ``after`` right
        after it (the next counted operation meets the cut). Pins a cut to a moment of a
        protocol ("between the fsync of the clip directory and the ring's") whatever the
        operation numbers are."""
        _check_mode(mode)
        if kind not in OP_KINDS + ("sync",):
            raise ValueError(f"unknown operation {kind!r}; one of {', '.join(OP_KINDS)}, sync")
        if n < 1:
            raise ValueError("n counts from 1")
        self._arm_on = ArmOn(kind, pattern.lstrip("/"), n, mode, after)

    def status(self) -> dict:
        return {"ops": self.op_no, "barriers": self.barriers, "counts": dict(self.counts),
                "pending": len(self.pending), "cut": self.frozen.as_dict() if self.frozen else None,
                "faults": [dict(kind=f.kind, n=f.n, err=f.err, count=f.count, seen=f.seen,
                                failed=f.failed) for f in self.faults]}

    # --------------------------------------------------------------- reading
    def getattr(self, path: str) -> dict:
        node = self.lookup(path)
        return self.attrs(node)

    def attrs(self, node: Node) -> dict:
        size = node.data.size if node.data is not None else 4096
        return {"st_mode": node.mode, "st_nlink": max(node.nlink, 1), "st_size": size,
                "st_ino": node.ino, "st_uid": os.getuid(), "st_gid": os.getgid(),
                "st_blocks": (size + 511) // 512, "st_blksize": PAGE,
                "st_mtime": node.mtime_ns, "st_ctime": node.mtime_ns, "st_atime": node.mtime_ns}

    def readdir(self, path: str) -> list[str]:
        node = self.lookup(path)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR, path)
        return list(self._load(node))

    def read(self, node: Node, size: int, offset: int) -> bytes:
        self.begin("read", scratch=node.scratch)
        return node.data.read(offset, size, self.reader)

    # --------------------------------------------------------------- data ops
    def write(self, node: Node, data: bytes, offset: int, now_ns: int = 0) -> int:
        self.begin("write", scratch=node.scratch, node=node)
        node.data.write(offset, data, self.reader)
        node.mtime_ns = now_ns
        if not node.scratch:
            self.pending.append(Op("write", node.ino, offset, bytes(data)))
        return len(data)

    def truncate(self, node: Node, size: int, now_ns: int = 0) -> None:
        if node.is_dir:
            raise fs_error(errno.EISDIR)
        self.begin("truncate", scratch=node.scratch, node=node)
        node.data.truncate(size, self.reader)
        node.mtime_ns = now_ns
        if not node.scratch:
            self.pending.append(Op("truncate", node.ino, size))

    def fsync(self, node: Node) -> None:
        if node.is_dir:
            return self.fsyncdir(node)
        self.begin("fsync", scratch=node.scratch, node=node)
        if node.scratch:
            return
        self.dur_data[node.ino] = node.data.copy()
        self.pending = [op for op in self.pending if op.kind == "entry" or op.ino != node.ino]
        self._barrier_done()

    def fsyncdir(self, node: Node) -> None:
        self.begin("fsyncdir", node=node)
        self.dur_entries[node.ino] = dict(self._load(node))
        self.pending = [op for op in self.pending if op.kind != "entry" or op.ino != node.ino]
        self._barrier_done()

    # -------------------------------------------------------------- name ops
    def _set_entry(self, parent: Node, *changes: tuple[str, int | None]) -> None:
        entries = self._load(parent)
        for name, target in changes:
            if target is None:
                entries.pop(name, None)
            else:
                entries[name] = target
        self.pending.append(Op("entry", parent.ino, changes=tuple(changes)))

    def create(self, path: str, mode: int, now_ns: int = 0, *, exclusive: bool = False) -> Node:
        parent, name = self._parent(path)
        existing = self._load(parent).get(name)
        if existing is not None:
            node = self.nodes[existing]
            if exclusive:
                raise fs_error(errno.EEXIST, path)
            if node.is_dir:
                raise fs_error(errno.EISDIR, path)
            return node
        scratch = self._is_scratch_name(name)
        self.begin("create", scratch=scratch, path=path)
        node = self._new_node(False, stat.S_IFREG | (mode & 0o7777))
        node.data, node.nlink, node.mtime_ns, node.scratch = FileData(), 1, now_ns, scratch
        self._set_entry(parent, (name, node.ino))
        return node

    def mkdir(self, path: str, mode: int, now_ns: int = 0) -> None:
        parent, name = self._parent(path)
        if name in self._load(parent):
            raise fs_error(errno.EEXIST, path)
        self.begin("mkdir", path=path)
        node = self._new_node(True, stat.S_IFDIR | (mode & 0o7777))
        node.entries, node.nlink, node.mtime_ns = {}, 2, now_ns
        self._set_entry(parent, (name, node.ino))

    def unlink(self, path: str) -> None:
        parent, name = self._parent(path)
        ino = self._load(parent).get(name)
        if ino is None:
            raise fs_error(errno.ENOENT, path)
        node = self.nodes[ino]
        if node.is_dir:
            raise fs_error(errno.EISDIR, path)
        self.begin("unlink", scratch=node.scratch, path=path)
        self._set_entry(parent, (name, None))
        node.nlink -= 1
        if not node.scratch:
            self.removed.append(path.lstrip("/"))
        self._maybe_gc()

    def rmdir(self, path: str) -> None:
        parent, name = self._parent(path)
        ino = self._load(parent).get(name)
        if ino is None:
            raise fs_error(errno.ENOENT, path)
        node = self.nodes[ino]
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR, path)
        if self._load(node):
            raise fs_error(errno.ENOTEMPTY, path)
        self.begin("rmdir", path=path)
        self._set_entry(parent, (name, None))
        node.nlink = 0

    def rename(self, old: str, new: str) -> None:
        sparent, sname = self._parent(old)
        ino = self._load(sparent).get(sname)
        if ino is None:
            raise fs_error(errno.ENOENT, old)
        dparent, dname = self._parent(new)
        node = self.nodes[ino]
        victim_ino = self._load(dparent).get(dname)
        if victim_ino == ino:
            return  # two names of one file: rename does nothing
        victim = self.nodes[victim_ino] if victim_ino is not None else None
        if node.is_dir:
            a = dparent
            while True:  # a directory cannot move below itself
                if a.ino == node.ino:
                    raise fs_error(errno.EINVAL, new)
                up = self._parent_of(a)
                if up is None:
                    break
                a = up
        if victim is not None:
            if victim.is_dir and not node.is_dir:
                raise fs_error(errno.EISDIR, new)
            if node.is_dir and not victim.is_dir:
                raise fs_error(errno.ENOTDIR, new)
            if victim.is_dir and self._load(victim):
                raise fs_error(errno.ENOTEMPTY, new)
        self.begin("rename", scratch=node.scratch, path=old)
        if dparent is sparent:  # one directory block: both changes land together or not at all
            self._set_entry(sparent, (dname, ino), (sname, None))
        else:  # new name first, then the old one goes: a prefix never loses the file
            self._set_entry(dparent, (dname, ino))
            self._set_entry(sparent, (sname, None))
        if victim is not None:
            if victim.is_dir:
                victim.nlink = 0
            else:
                victim.nlink -= 1
                if not victim.scratch:
                    self.removed.append(new.lstrip("/"))
            self._maybe_gc()

    def _parent_of(self, node: Node) -> Node | None:
        """The directory holding ``node`` (volatile tree; only loaded directories can)."""
        if node.ino == ROOT_INO:
            return None
        for cand in self.nodes.values():
            if cand.is_dir and cand.entries and node.ino in cand.entries.values():
                return cand
        return None

    def link(self, existing: str, new: str) -> None:
        node = self.lookup(existing)
        if node.is_dir:
            raise fs_error(errno.EPERM, existing)
        parent, name = self._parent(new)
        if name in self._load(parent):
            raise fs_error(errno.EEXIST, new)
        self.begin("link", scratch=node.scratch, path=new)
        self._set_entry(parent, (name, node.ino))
        node.nlink += 1

    # -------------------------------------------------------------------- gc
    def _maybe_gc(self) -> None:
        self._removals_since_gc += 1
        if self._removals_since_gc >= 256:
            self._removals_since_gc = 0
            self.gc()

    def gc(self) -> None:
        """Forget inodes nothing can reach any more (no name, durable or volatile; no
        pending op; not open)."""
        keep = {ROOT_INO} | {ino for ino, n in self.open_count.items() if n > 0}
        for entries in self.dur_entries.values():
            keep.update(entries.values())
        for node in self.nodes.values():
            if node.is_dir and node.entries:
                keep.update(node.entries.values())
        for op in self.pending:
            keep.add(op.ino)
            keep.update(t for _, t in op.changes if t is not None)
        for ino in [i for i in self.nodes if i not in keep]:
            del self.nodes[ino]
            self.dur_data.pop(ino, None)
            self.dur_entries.pop(ino, None)

    # ------------------------------------------------------------------- cuts
    def paths(self) -> dict[int, str]:
        """One volatile path per inode (for reports)."""
        out: dict[int, str] = {ROOT_INO: "/"}
        stack = [(ROOT_INO, "")]
        while stack:
            ino, prefix = stack.pop()
            node = self.nodes[ino]
            for name, child in (node.entries or {}).items():
                path = f"{prefix}/{name}"
                if child not in out:
                    out[child] = path
                    if self.nodes[child].is_dir:
                        stack.append((child, path))
        return out

    def cut(self, mode: str = "torn") -> CutReport:
        """Power cut now: decide what of ``pending`` reached the medium, freeze, and
        write the surviving image to the backing directory."""
        _check_mode(mode)
        if self.frozen is not None:
            return self.frozen
        self._cuts += 1
        rng = random.Random(f"{self.seed}:{self._cuts}:{self.op_no}:{mode}")
        names = self.paths()
        rep = CutReport(mode=mode, at_op=self.op_no, barriers=self.barriers,
                        pending_ops=len(self.pending))
        if mode == "prefix":
            n = rng.randrange(len(self.pending)) if self.pending else 0
            rep.surviving_ops = n
            for op in self.pending[:n]:
                self._apply(op)
            for op in self.pending[n:]:
                self._report_lost(op, rep, names)
        elif mode == "torn":
            self._torn(rng, rep, names)
        else:
            for op in self.pending:
                self._report_lost(op, rep, names)
        self.pending = []
        self.frozen = rep
        self.materialize()
        if self.on_cut is not None:
            self.on_cut(rep)
        return rep

    def _apply(self, op: Op) -> None:
        if op.kind == "entry":
            entries = self.dur_entries.setdefault(op.ino, {})
            for name, target in op.changes:
                if target is None:
                    entries.pop(name, None)
                else:
                    entries[name] = target
            return
        data = self.dur_data.get(op.ino)
        if data is None:
            data = self.dur_data[op.ino] = FileData()
        if op.kind == "write":
            data.write(op.offset, op.data, self.reader)
        else:
            data.truncate(op.offset, self.reader)

    def _report_lost(self, op: Op, rep: CutReport, names: dict[int, str]) -> None:
        where = names.get(op.ino, f"<inode {op.ino}>")
        if op.kind == "entry":
            for name, target in op.changes:
                rep.lost_entries.append(f"{where.rstrip('/')}/{name}"
                                        + (" (removal)" if target is None else ""))
        else:
            rep.lost_pages[where] = rep.lost_pages.get(where, 0) + (
                max(1, (len(op.data) + PAGE - 1) // PAGE) if op.kind == "write" else 0)
            if op.kind == "truncate":
                rep.lost_sizes.setdefault(where, [op.offset, -1])

    def _torn(self, rng: random.Random, rep: CutReport, names: dict[int, str]) -> None:
        # Candidates: (file, page) pairs and (file, size) and whole directory blocks.
        touched: dict[int, set[int]] = {}
        dirs: list[int] = []
        for op in self.pending:
            if op.kind == "entry":
                if op.ino not in dirs:
                    dirs.append(op.ino)
                continue
            pages = touched.setdefault(op.ino, set())
            if op.kind == "write":
                pages.update(range(op.offset // PAGE, (op.offset + max(len(op.data), 1) - 1) // PAGE + 1))
        for op in self.pending:  # a truncate touches every page from the cut point on
            if op.kind == "truncate":
                vol, dur = self.nodes[op.ino].data, self.dur_data.get(op.ino) or FileData()
                top = max(vol.size, dur.size, op.offset)
                touched.setdefault(op.ino, set()).update(range(op.offset // PAGE, (top + PAGE - 1) // PAGE + 1))
        items: list[tuple] = []  # ("page", ino, i, volatile bytes) | ("size", ino, vol) | ("dir", ino)
        for ino, pages in touched.items():
            node = self.nodes.get(ino)
            if node is None or node.data is None:
                continue
            vol, dur = node.data, self.dur_data.get(ino) or FileData()
            for i in sorted(pages):
                vp = vol.page(i, self.reader) if i * PAGE < vol.size else bytes(PAGE)
                if vp != (dur.page(i, self.reader) if i * PAGE < dur.size else bytes(PAGE)):
                    items.append(("page", ino, i, vp))
            if vol.size != dur.size:
                items.append(("size", ino, vol.size))
        for d in dirs:
            if self.nodes[d].entries is not None and self.nodes[d].entries != self.dur_entries.get(d, {}):
                items.append(("dir", d))
        survive = [rng.random() < 0.5 for _ in items]
        if items and all(survive):
            survive[rng.randrange(len(items))] = False
        new_sizes: dict[int, int] = {}
        for item, keep in zip(items, survive):
            kind, ino = item[0], item[1]
            where = names.get(ino, f"<inode {ino}>")
            if kind == "page":
                if keep:
                    data = self.dur_data.get(ino)
                    if data is None:
                        data = self.dur_data[ino] = FileData()
                    data.pages[item[2]] = item[3]
                else:
                    rep.lost_pages[where] = rep.lost_pages.get(where, 0) + 1
            elif kind == "size":
                if keep:
                    self.dur_data.setdefault(ino, FileData())
                    new_sizes[ino] = item[2]
                else:
                    rep.lost_sizes[where] = [item[2], (self.dur_data.get(ino) or FileData()).size]
            elif keep:
                self.dur_entries[ino] = dict(self.nodes[ino].entries)
            else:
                rep.lost_dirs.append(where)
        rep.surviving_ops = sum(survive)
        # Sizes last: a page beyond the kept size is gone; a size beyond the kept pages
        # reads zeros (or the old bytes) there, as after a real cut.
        for ino in touched:
            data = self.dur_data.get(ino)
            if data is None:
                continue
            size = new_sizes.get(ino, data.size)
            tail = (size + PAGE - 1) // PAGE
            for i in [i for i in data.pages if i >= tail]:
                del data.pages[i]
            if size < data.size:
                data.truncate(size, self.reader)
            else:
                data.size = size

    def sync_all(self) -> None:
        """A clean unmount: everything volatile becomes durable."""
        for node in self.nodes.values():
            if node.is_dir:
                if node.entries is not None:
                    self.dur_entries[node.ino] = dict(node.entries)
            elif not node.scratch:
                self.dur_data[node.ino] = node.data.copy()
        self.pending = []

    # ------------------------------------------------------------ materialize
    def materialize(self) -> None:
        """Write the durable image to the backing directory (new tree, then swap)."""
        parent = self.backing.parent
        new = parent / f".{self.backing.name}.powercut-new"
        old = parent / f".{self.backing.name}.powercut-old"
        for leftover in (new, old):
            if leftover.exists():
                shutil.rmtree(leftover)
        new.mkdir(mode=self.nodes[ROOT_INO].mode & 0o7777)
        written: dict[int, str] = {}
        self._emit_dir(ROOT_INO, str(new), written, {ROOT_INO})
        self.reader.close()
        os.rename(self.backing, old)
        os.rename(new, self.backing)
        shutil.rmtree(old)

    def _emit_dir(self, ino: int, dst: str, written: dict[int, str], seen: set[int]) -> None:
        node = self.nodes[ino]
        entries = self.dur_entries.get(ino)
        if entries is None:
            if node.entries is None and node.origin is not None:  # never looked at: as it was
                _link_tree(node.origin, dst)
            return
        for name, child_ino in sorted(entries.items()):
            child = self.nodes.get(child_ino)
            if child is None:
                continue
            path = os.path.join(dst, name)
            if child.is_dir:
                if child_ino in seen:
                    continue  # a directory durable in two places (a half-durable move)
                os.mkdir(path, child.mode & 0o7777)
                self._emit_dir(child_ino, path, written, seen | {child_ino})
                continue
            if child_ino in written:
                os.link(written[child_ino], path)
                continue
            data = self.dur_data.get(child_ino) if not child.scratch else None
            if data is None:
                data = FileData()
            if data.is_pure_base(self.reader):
                os.link(data.base, path)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, child.mode & 0o7777)
                try:
                    pos = 0
                    while pos < data.size:
                        chunk = data.read(pos, 1 << 20, self.reader)
                        os.pwrite(fd, chunk, pos)
                        pos += len(chunk)
                    os.ftruncate(fd, data.size)
                finally:
                    os.close(fd)
            written[child_ino] = path


def _link_tree(src: str, dst: str) -> None:
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        st = os.lstat(s)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, st.st_mode & 0o7777)
            _link_tree(s, d)
        elif stat.S_ISREG(st.st_mode):
            os.link(s, d)


def _check_mode(mode: str) -> None:
    if mode not in CUT_MODES:
        raise ValueError(f"unknown cut mode {mode!r}; one of {', '.join(CUT_MODES)}")
