"""Regenerate (or --check) README.md's configuration table from firmware/config.py SCHEMA.

The table is the output of `bwv config --defaults`; the README must never drift from
the code that validates the file.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.config import defaults_markdown  # noqa: E402


def split(readme: str) -> tuple[str, str, str]:
    """(before, table, after) around the table that follows '## Configuration'."""
    head, sep, rest = readme.partition("## Configuration\n")
    if not sep:
        raise SystemExit("README.md has no '## Configuration' section")
    start = rest.index("| key | default |")
    end = rest.index("\n\n", start)
    return head + sep + rest[:start], rest[start:end + 1], rest[end + 1:]


def main(argv: list[str]) -> int:
    path = ROOT / "README.md"
    before, table, after = split(path.read_text())
    want = defaults_markdown().rstrip("\n") + "\n"
    if table == want:
        return 0
    if "--check" in argv:
        print("README.md's configuration table is stale: run python scripts/readme_config.py",
              file=sys.stderr)
        return 1
    path.write_text(before + want + after)
    print("README.md: configuration table regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
