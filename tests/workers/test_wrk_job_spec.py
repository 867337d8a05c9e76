"""`job_spec`: a worker keeps each job's parsed spec and reads only the job's stamp (status and
creation time) per task, so a task's cost does not grow with its job's prompts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dfusion_core.storage import LocalDirStore
from services.state import JobStatus
from services.state.memory import MemoryJobStore
from workers.context import Context
from workers.runtime import Runtime
from workers.stages.common import job_spec


class CountingStore(MemoryJobStore):
    """Counts whole-job reads (the spec's JSON and its validation)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get_job(self, job_id: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().get_job(job_id)


def _ctx(state: MemoryJobStore, tmp_path: Path) -> Context:
    return Context(state=state, store=LocalDirStore(tmp_path), dispatch=lambda *a, **k: None, runtime=Runtime(models={}))


def _spec(text: str) -> dict[str, Any]:
    return {"prompts": [{"text": text, "items": [text.split()[-1]], "mask_thresholds": [0.5]}], "model": "sim", "samples_per_prompt": 4}


def test_a_job_s_spec_is_read_once_and_its_status_every_task(tmp_path: Path) -> None:
    state = CountingStore()
    state.create_job("j1", "acme", _spec("a cat"))
    ctx, state.reads = _ctx(state, tmp_path), 0
    first = job_spec(ctx, "j1")
    assert first is not None and first.prompts[0].text == "a cat"
    assert [job_spec(ctx, "j1") for _ in range(5)] == [first] * 5
    assert state.reads == 1
    state.set_status("j1", JobStatus.CANCELLED)
    assert job_spec(ctx, "j1") is None  # the stamp is read every task: a cancel is seen at once


def test_a_job_of_the_same_id_in_another_store_gets_its_own_spec(tmp_path: Path) -> None:
    """Two stores (the embedded runner's, tests') may both hold a job "j1": their creation times
    keep the kept specs apart."""
    a, b = MemoryJobStore(), MemoryJobStore()
    a.create_job("j1", "acme", _spec("a cat"))
    time.sleep(0.02)  # a clock tick apart even where time.time() is coarse (15.6 ms on Windows)
    b.create_job("j1", "acme", _spec("a dog"))
    assert a.get_job("j1").created_at != b.get_job("j1").created_at
    assert job_spec(_ctx(a, tmp_path), "j1").prompts[0].text == "a cat"  # type: ignore[union-attr]
    assert job_spec(_ctx(b, tmp_path), "j1").prompts[0].text == "a dog"  # type: ignore[union-attr]
