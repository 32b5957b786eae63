"""Shared pytest setup: make the repository root importable (`import ganlib`) when running plain `pytest`."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
