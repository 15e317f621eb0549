"""DESIGN.md's folder ownership, enforced: data flows drivers → capture → buffer → sync.

A module may import from its own folder and from folders upstream of it; ``firmware``
wires everything; ``hw_sim`` is reached only by the simulator command and tests;
picamera2 is never imported at module load (it does not install off the Pi).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "drivers": {"drivers"},
    "capture": {"capture", "drivers"},
    "buffer": {"buffer", "capture", "drivers"},
    "sync": {"sync", "buffer", "capture", "drivers"},
    "firmware": {"firmware", "sync", "buffer", "capture", "drivers", "hw_sim"},
    "hw_sim": {"hw_sim", "firmware", "sync", "buffer", "capture", "drivers"},
}
PROJECT = set(ALLOWED)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_each_folder_imports_only_upstream():
    bad = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in imports_of(path) & PROJECT:
                if name not in allowed:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad


def test_hw_sim_is_only_imported_lazily_by_the_firmware():
    """firmware may use hw_sim only inside functions (the `sim` command), never at load."""
    for path in sorted((ROOT / "firmware").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert not (mod or "").startswith("hw_sim"), f"{path.name} imports hw_sim at load"


def test_production_modules_load_without_hw_sim_or_picamera2():
    code = ("import sys, firmware.cli, firmware.agent, buffer.verify, buffer.export, "
            "capture.segmenter, drivers.controls, drivers.keystore; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hw_sim','picamera2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "[]"
