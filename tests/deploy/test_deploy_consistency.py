"""docker-compose.yml and Dockerfile.gpu against the Compose Specification and against the code.

No Docker engine here: the compose file is validated with check-jsonschema's vendored copy of the
Compose Specification's schema (every service, whatever its profile), and its services' commands,
queues and environment variables are checked against what the code reads. A queue renamed in
`services/queue.py` or a variable renamed in `services/settings.py` fails here until compose
follows.
"""

from __future__ import annotations

import ast
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from cli.main import COMMANDS
from services.queue import QUEUES, ROUTES
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("sampler", "scorer", "fuser", "trainer")
# Variables compose sets that a library reads, not our settings: who reads each.
THIRD_PARTY = {"HF_HOME": "huggingface_hub", "WANDB_MODE": "wandb", "WANDB_PROJECT": "wandb",
               "WANDB_API_KEY": "wandb", "MLFLOW_TRACKING_URI": "mlflow"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def settings_variables() -> set[str]:
    """Every environment variable `Settings` reads: DFUSION_<FIELD>, or the field's aliases."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str)}
        else:
            names.add(f"DFUSION_{name.upper()}")
    return names


def variables_read_in_code() -> set[str]:
    """Names our code reads with os.environ.get("NAME") / os.environ["NAME"] (outside Settings)."""
    names = set()
    for package in ("services", "workers", "api", "cli", "devstack"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"os\.environ(?:\.get\(|\[)\"([A-Z0-9_]+)\"", path.read_text()))
    return names


def _queues(command: list[str]) -> list[str]:
    assert command[0] == "worker" and command[0] in COMMANDS, command
    return command[command.index("--queues") + 1].split(",")


def compose_problems(compose: dict[str, Any]) -> list[str]:
    """What in the compose file does not match the code; [] when everything does."""
    problems = []
    services = compose["services"]
    consumed: set[str] = set()
    for name in WORKERS:
        queues = _queues(services[name]["command"])
        problems += [f"{name}: no queue {q!r} in services/queue.py QUEUES" for q in queues if q not in QUEUES]
        consumed |= set(queues)
    problems += [f"queue {q!r} has no worker service" for q in sorted(set(QUEUES) | set(ROUTES.values())) if
                 q not in consumed]
    known = settings_variables() | variables_read_in_code() | set(THIRD_PARTY)
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if svc.get("image", "").startswith("dfusion:"):
            problems += [f"{name}: {var} is read by nothing" for var in env if var not in known]
    for var in ("REDIS_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        if var not in compose["x-common-env"]:
            problems.append(f"x-common-env lacks {var}")
    redis = compose["x-common-env"]["REDIS_URL"]
    if f"--broker={redis}" not in services["flower"]["command"]:
        problems.append(f"flower watches another broker than {redis}")
    return problems


def test_compose_matches_the_code(compose: dict[str, Any]) -> None:
    assert compose_problems(compose) == []


def test_a_renamed_queue_or_variable_is_caught(compose: dict[str, Any]) -> None:
    renamed = copy.deepcopy(compose)
    renamed["services"]["fuser"]["command"] = ["worker", "--queues", "fusion"]
    assert compose_problems(renamed) == ["fuser: no queue 'fusion' in services/queue.py QUEUES",
                                         "queue 'fuse' has no worker service"]
    renamed = copy.deepcopy(compose)
    renamed["x-common-env"]["DFUSION_VISIBILITY_TIMEOUT"] = renamed["x-common-env"].pop("DFUSION_VISIBILITY_TIMEOUT_S")
    for name in WORKERS:
        renamed["services"][name]["environment"] = renamed["x-common-env"]
    assert "sampler: DFUSION_VISIBILITY_TIMEOUT is read by nothing" in compose_problems(renamed)


def test_compose_entry_points_exist(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]["entrypoint"]
    module, attr = api[api.index("uvicorn") + 1].split(":")
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == attr for t in n.targets) for n in tree.body)
    health = " ".join(compose["x-worker"]["healthcheck"]["test"])
    for app in re.findall(r"celery -A (\S+)", health):
        assert (ROOT / (app.replace(".", "/") + ".py")).is_file(), app


def _validator() -> str:
    beside = Path(sys.executable).parent / "check-jsonschema"
    found = str(beside) if beside.exists() else shutil.which("check-jsonschema")
    assert found, "check-jsonschema not found (pip install check-jsonschema; the test extra has it)"
    return found


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_validator(), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_validates_against_the_compose_specification(tmp_path: Path) -> None:
    """Every service is validated, those behind a profile (rabbitmq) too; a file the current spec
    rejects fails, so the check judges."""
    proc = _validate(ROOT / "docker-compose.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broken["services"]["rabbitmq"]["depends_on"] = {"redis": {"condition": "service_happy"}}
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(broken))
    assert _validate(tmp_path / "compose.yml").returncode != 0


def test_every_file_the_dockerfile_copies_exists() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    sources = [src for line in re.findall(r"^COPY (.+)$", text, re.M) for src in line.split()[:-1]
               if not src.startswith("--")]
    assert sources and all((ROOT / s).exists() for s in sources), [s for s in sources if not (ROOT / s).exists()]
    entry = re.search(r"^ENTRYPOINT \[\"(\w+)\"\]", text, re.M).group(1)
    assert f'{entry} = "cli.main:main"' in (ROOT / "pyproject.toml").read_text()
    cmd = ast.literal_eval(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert set(_queues(cmd)) == set(QUEUES)
    # what the API serves from the package (the vendored chart scripts) is package data
    assert 'reports = ["static/**/*"]' in (ROOT / "pyproject.toml").read_text()
