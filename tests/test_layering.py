"""Dependencies point inward (STYLE, "Layers point one way"): core loads no infrastructure,
services and the API process never load torch, the embedded runner needs no Redis client.

Module lists are walked from the packages, so a new module is covered the day it is added; the
names below only make sure the walk still finds the ones this test was written for.
"""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import devstack
import dfusion_core
import reports
import services

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted(m.name for m in pkgutil.walk_packages(dfusion_core.__path__, "dfusion_core."))
SERVICES = sorted(m.name for m in pkgutil.walk_packages(services.__path__, "services."))
DEVSTACK = sorted(m.name for m in pkgutil.walk_packages(devstack.__path__, "devstack."))
REPORTS = sorted(m.name for m in pkgutil.walk_packages(reports.__path__, "reports."))
INFRASTRUCTURE = {"celery", "kombu", "redis", "minio", "boto3", "botocore", "fastapi", "starlette", "uvicorn",
                  "services", "workers", "api", "cli", "devstack", "reports"}
TORCH = {"torch", "diffusers", "transformers", "peft"}


def _loaded(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing `modules` in a fresh interpreter."""
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print(' '.join(sorted({k.split('.')[0] for k in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300, cwd=ROOT)
    return set(out.stdout.split())


def test_the_walk_finds_every_module() -> None:
    for name in ("attention", "blocks", "checkpoint", "config", "evaluation", "fusion", "items", "lora", "losses",
                 "models", "pairs", "pipeline", "registry", "sampling", "scoring", "storage", "toy.world",
                 "toy.scorer", "toy.model", "training", "trajectories"):
        assert f"dfusion_core.{name}" in CORE
    for name in ("state", "state.protocol", "state.redis", "state.memory", "state.tokens", "state.types",
                 "state.keys", "telemetry"):
        assert f"services.{name}" in SERVICES
    assert {"devstack.procs", "devstack.plan", "devstack.health", "devstack.stack"} <= set(DEVSTACK)
    assert {"reports.html", "reports.job"} <= set(REPORTS)


def test_core_imports_no_infrastructure() -> None:
    assert not _loaded(CORE) & INFRASTRUCTURE


def test_core_reads_no_environment() -> None:
    for path in (ROOT / "dfusion_core").rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path.name


def test_config_registry_and_toy_world_are_torch_free() -> None:
    modules = ["dfusion_core.config", "dfusion_core.storage", "dfusion_core.errors", "dfusion_core.registry",
               "dfusion_core.toy.world", "dfusion_core.presets", "dfusion_core.stats"]
    assert "torch" not in _loaded(modules)


def test_services_never_import_torch() -> None:
    assert not _loaded(SERVICES) & (TORCH | {"fastapi", "workers", "api", "cli", "devstack", "reports"})


def test_devstack_and_reports_never_import_torch() -> None:
    """The local stack is a developer tool and the report pieces serve the API: neither needs torch."""
    assert not _loaded(DEVSTACK + REPORTS) & (TORCH | {"fastapi", "workers", "api", "cli"})


@pytest.mark.parametrize("modules", [["api.main"], ["cli.jobargs", "cli.submit"]], ids=["api", "cli-remote"])
def test_api_and_remote_cli_do_not_import_torch(modules: list[str]) -> None:
    pytest.importorskip(modules[0])
    assert not _loaded(modules) & TORCH


def test_workers_stages_and_embedded_runner_need_no_api_nor_redis() -> None:
    assert not _loaded(["workers.stages", "workers.embedded"]) & {"redis", "fastapi", "starlette", "api", "cli"}
