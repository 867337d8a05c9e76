"""The embedded runner's error policy is the Celery workers' (workers.stages.fail_job): any
exception from a stage fails the job with a readable reason, and the run folder still gets its
metrics and report. No model is loaded: the failing stage is the first sample task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfusion_core.errors import ConfigError
from services.jobspec import JobSpec
from services.queue import SAMPLE
from services.state import JobStatus
from workers import embedded
from workers.stages import Context


def _spec() -> JobSpec:
    return JobSpec.model_validate({"prompts": [{"text": "a cat"}], "samples_per_prompt": 4, "training": {"pairs": "plain"}})


def _assert_written(out: Path, status: str) -> None:
    assert json.loads((out / "metrics.json").read_text())["status"] == status
    assert (out / "report.html").stat().st_size > 0
    assert json.loads((out / "samples.json").read_text()) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyError("x"), ConfigError("model", "unknown")],
                         ids=["RuntimeError", "KeyError", "DFusionError"])
def test_any_stage_error_fails_the_job_with_a_report(tmp_path: Path, monkeypatch, exc: Exception) -> None:
    def boom(ctx: Context, job_id: str, **kwargs: int) -> None:
        raise exc

    monkeypatch.setitem(embedded.STAGES, SAMPLE, boom)
    result = embedded.run_embedded(_spec(), tmp_path)
    assert (result.status, result.error) == ("failed", f"sample: {type(exc).__name__}: {exc}")
    _assert_written(tmp_path, "failed")


def test_a_stage_failing_after_the_job_ended_leaves_its_status(tmp_path: Path, monkeypatch) -> None:
    """As in the workers, a job already in a terminal status is not moved (no InvalidTransition escapes)."""

    def cancel_then_fail(ctx: Context, job_id: str, **kwargs: int) -> None:
        ctx.state.set_status(job_id, JobStatus.CANCELLED)
        raise RuntimeError("late")

    monkeypatch.setitem(embedded.STAGES, SAMPLE, cancel_then_fail)
    result = embedded.run_embedded(_spec(), tmp_path)
    assert (result.status, result.error) == ("cancelled", None)
    _assert_written(tmp_path, "cancelled")
