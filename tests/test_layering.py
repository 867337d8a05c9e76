"""Dependencies point inward (STYLE, "Layers point one way"): core loads no infrastructure,
services and the API process never load torch, the embedded runner needs no Redis client, and no
two modules import each other, directly or round a longer loop.

Module lists are walked from the packages, so a new module is covered the day it is added; the
names below only make sure the walk still finds the ones this test was written for.
"""

import ast
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
    assert {"devstack.procs", "devstack.plan", "devstack.health", "devstack.stack", "devstack.harness",
            "devstack.netns"} <= set(DEVSTACK)
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


# --- import cycles ---------------------------------------------------------------------------------
PACKAGES = ("dfusion_core", "services", "workers", "api", "cli", "reports", "devstack")


def _modules(packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages (folders under the root) by dotted name (a package by its own name)."""
    out = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its text: at the top, under TYPE_CHECKING or
    inside a function alike, since an import moved into a function hides a cycle, it does not end it."""
    out: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return (out & modules.keys()) - {name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_import_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    """A module that needs a name from one that imports it gets the name moved below both
    (`devstack.procs.ProcessInfo`, `dfusion_core.bundle`, `trajectories.TrainPair`, `workers.context`)."""
    modules = _modules()
    assert {"devstack.stack", "dfusion_core.sdxl", "workers.publish", "workers.stages.training"} <= modules.keys()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["workers.stages"] >= {"workers.stages.training"}  # the walk sees package imports
    assert import_cycles(graph) == []


# --- the test suite is a leaf ------------------------------------------------------------------

def test_nothing_outside_tests_imports_tests() -> None:
    """The benches and scripts are tools users run, and the packages are what they run: none may need
    the test suite (a throwaway stack for both is `devstack.harness`)."""
    importers = _modules((*PACKAGES, "bench", "scripts"))
    assert any(name.startswith("bench.") for name in importers)
    # tests/ has no __init__.py: "tests" itself is named so that `from tests import x` counts too
    known = {**importers, **_modules(("tests",)), "tests": ROOT / "tests"}
    offenders = sorted(f"{name}: {dep}" for name, path in importers.items() for dep in _imports(name, path, known)
                       if dep.split(".")[0] == "tests")
    assert offenders == []
