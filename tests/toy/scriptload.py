"""Load one of the repository's scripts (scripts/, bench/) as a module, for the tests that call its
functions directly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(relpath: str, name: str | None = None) -> ModuleType:
    """`relpath` ('scripts/toy_triplet.py') as a fresh module, registered in sys.modules under `name`
    (default: the file's stem) so that dataclasses it defines resolve their annotations."""
    name = name or Path(relpath).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
