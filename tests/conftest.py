"""Shared test setup: makes tests/support importable as ``support``, here and in the processes tests start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = str(Path(__file__).parent)
sys.path.insert(0, TESTS)
# Subprocesses (`shoal up --engine-module support.fake_engine`, kmock) import the scaffolding too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p)
