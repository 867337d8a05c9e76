"""Dependencies point inward: core never loads infrastructure; the API process never loads torch."""

import subprocess
import sys

import pytest

CORE = ["dfusion_core." + m for m in ("attention", "fusion", "pipeline", "sampling", "items", "pairs", "trajectories",
                                       "models", "lora", "golden", "config", "storage")]


def _loaded(modules: list[str]) -> set[str]:
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print(' '.join(sorted({k.split('.')[0] for k in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return set(out.stdout.split())


def test_core_imports_no_infrastructure():
    loaded = _loaded(CORE)
    assert not loaded & {"celery", "redis", "minio", "fastapi", "uvicorn", "services", "workers", "api"}


def test_config_is_torch_free():
    assert "torch" not in _loaded(["dfusion_core.config", "dfusion_core.storage", "dfusion_core.errors"])


@pytest.mark.parametrize("module", ["api.main"])
def test_api_does_not_import_torch(module):
    pytest.importorskip(module)
    assert "torch" not in _loaded([module])
