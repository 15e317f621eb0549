"""``bwv bundle`` and ``bwv release``: the CLI side of firmware/bundle_build.py and
firmware/release.py (kept out of cli.py so that file stays a table of commands).

Errors are one line on stderr and exit 2, like every other ``bwv`` command (printed
here rather than raised as ``cli.CliError``, which is a different class when cli.py
runs as ``python -m firmware.cli``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

from drivers.clock import SystemClock
from firmware.bundle import HARDWARE_IDS, BundleError
from firmware.cli import EXIT_ERROR, _progress


class _Refused(Exception):
    pass


def _fail(exc: BaseException) -> int:
    print(f"bwv: error: {exc}", file=sys.stderr)
    return EXIT_ERROR


def _now() -> _dt.datetime:
    return _dt.datetime.fromtimestamp(SystemClock().utc_ns() // 10**9, tz=_dt.UTC)


def _expiry(args) -> dict[str, int]:
    out = {}
    for role in ("root", "targets", "snapshot", "timestamp"):
        days = getattr(args, f"{role}_days", None)
        if days is not None:
            if days < 1:
                raise _Refused(f"--{role}-days: must be at least 1")
            out[role] = days
    return out


def cmd_bundle(args) -> int:
    from firmware.bundle_build import BuildError, make_firmware, now_utc
    try:
        path = make_firmware(Path(args.out), created_utc=now_utc(SystemClock().utc_ns()),
                             version=args.version or None, hardware=args.hardware or None,
                             min_version=args.min_version,
                             src=Path(args.source) if args.source else Path(__file__).resolve().parent.parent,
                             progress=_progress("building bundle (steps)"))
        from firmware.bundle import read_manifest
        m = read_manifest(path)
    except (BuildError, BundleError) as exc:
        return _fail(exc)
    print(json.dumps({"bundle": str(path), **m.as_dict()}, sort_keys=True))
    return 0


def cmd_release(args) -> int:
    from firmware import release
    try:
        if args.which == "init":
            res = release.init_repo(Path(args.repo), Path(args.keys), now=_now(),
                                    root_keys=args.root_keys, root_threshold=args.root_threshold,
                                    expiry_days=_expiry(args))
            out = res.as_dict()
            out["next"] = (f"pin {res.root} on every camera as <keys_dir>/update-root.json "
                           f"(bwv provision --update-root {res.root}); keep the root keys offline")
        elif args.which == "add":
            show = _progress("publishing bundle (MB)")
            out = release.add_bundle(Path(args.repo), Path(args.keys), Path(args.bundle),
                                     now=_now(), expiry_days=_expiry(args),
                                     progress=lambda d, t: show(d / 1e6, t / 1e6)).as_dict()
        elif args.which == "refresh":
            out = release.refresh(Path(args.repo), Path(args.keys), now=_now(),
                                  everything=args.all, expiry_days=_expiry(args))
        elif args.which == "rotate":
            out = release.rotate_key(Path(args.repo), Path(args.keys), args.role, now=_now(),
                                     number=args.number, expiry_days=_expiry(args))
        elif args.which == "archive":
            show = _progress("writing archive (MB)")
            out = release.make_archive(Path(args.repo), Path(args.out), now=_now(),
                                       hardware=args.hardware or None,
                                       progress=lambda d, t: show(d / 1e6, t / 1e6))
        else:
            out = release.status(Path(args.repo), now=_now())
    except (release.ReleaseError, BundleError, _Refused) as exc:
        return _fail(exc)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def add_parsers(sub) -> None:
    b = sub.add_parser("bundle", help="build a firmware bundle (wheel + default config + manifest)")
    b.add_argument("--out", default="out/firmware", help="directory for bwv-firmware-<version>.tar")
    b.add_argument("--version", help="bundle and wheel version (default: pyproject.toml's)")
    b.add_argument("--hardware", nargs="+", choices=HARDWARE_IDS,
                   help="hardware ids it may install on (default: all)")
    b.add_argument("--min-version", default="0",
                   help="oldest running version that may update to it (default: any)")
    b.add_argument("--source", help="source tree with pyproject.toml (default: this one)")
    b.set_defaults(fn=cmd_bundle)

    r = sub.add_parser("release", help="back office: the signed (TUF) update repository")
    rs = r.add_subparsers(dest="which", required=True)

    def common(p: argparse.ArgumentParser, keys: bool = True) -> None:
        p.add_argument("--repo", required=True, help="repository directory (metadata/, targets/)")
        if keys:
            p.add_argument("--keys", required=True, help="release keys directory (0700, keys 0600)")
            for role in ("root", "targets", "snapshot", "timestamp"):
                p.add_argument(f"--{role}-days", type=int, help=f"{role} metadata lifetime, days")
        p.set_defaults(fn=cmd_release)

    ri = rs.add_parser("init", help="new keys and repository (root: --root-threshold of "
                                    "--root-keys keys must sign)")
    common(ri)
    ri.add_argument("--root-keys", type=int, default=3)
    ri.add_argument("--root-threshold", type=int, default=2)
    ra = rs.add_parser("add", help="publish a bundle (new targets, snapshot, timestamp)")
    ra.add_argument("bundle")
    common(ra)
    rr = rs.add_parser("refresh", help="new timestamp (and snapshot/targets when near expiry)")
    rr.add_argument("--all", action="store_true", help="re-sign targets and snapshot too")
    common(rr)
    rk = rs.add_parser("rotate", help="replace a lost or leaked key (new root version)")
    rk.add_argument("role", choices=("root", "targets", "snapshot", "timestamp"))
    rk.add_argument("--number", type=int, default=1, help="which key of the role (root-N.pem)")
    common(rk)
    rc = rs.add_parser("archive", help="offline update archive (console flash, USB stick)")
    rc.add_argument("--out", required=True, help="archive file (.tar)")
    rc.add_argument("--hardware", nargs="+", choices=HARDWARE_IDS,
                    help="only the newest bundle for these hardware ids")
    common(rc, keys=False)
    rst = rs.add_parser("status", help="role versions and expiry, published bundles")
    common(rst, keys=False)
