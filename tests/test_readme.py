"""The README's configuration table is generated from the schema the loader enforces."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_table_matches_the_schema():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_config.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
