"""The compare task's body (workers/compare.py) on the tiny model, with in-memory state and a local
store: base and trained images from the same noise, the trained model's item masks, the failure
policy (the compare fails, the job does not). The API side: tests/api/test_api_compare.py; the
whole path over HTTP: tests/integration/test_it_compare.py."""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfusion_core.lora import add_lora, lora_bytes
from dfusion_core.registry import load_model
from dfusion_core.storage import LocalDirStore
from services.compare import CompareRecord, CompareStatus
from services.jobspec import JobSpec
from services.state import JobStatus, LeaseLost
from services.state.compares import MemoryCompareStore
from services.state.memory import MemoryJobStore
from workers import keys
from workers.compare import compare
from workers.runtime import Runtime
from workers.stages import Context

JOB = "j1"
PROMPT = "a cat eating a sandwich"


def _trained_lora() -> bytes:
    """A LoRA on the tiny model whose B matrices are not zero: the policy differs from its base."""
    model = load_model("tiny", torch.device("cpu"), torch.float32)
    add_lora(model.unet, rank=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return lora_bytes(model.unet)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    spec = JobSpec.model_validate({
        "prompts": [{"text": PROMPT, "items": ["cat", "sandwich"], "mask_thresholds": [0.03, 0.005]}],
        "model": "tiny", "samples_per_prompt": 4, "sampling": {"num_steps": 3, "batch_size": 2},
        "fusion": {"mask_mode": "quantile", "mask_level": 0.5},
    })
    state = MemoryJobStore()
    state.create_job(JOB, "acme", spec.model_dump(mode="json"))
    state.set_status(JOB, JobStatus.RUNNING)
    state.set_status(JOB, JobStatus.SUCCEEDED)
    store = LocalDirStore(tmp_path_factory.mktemp("store"))
    store.put(keys.checkpoint_key(JOB, 1), _trained_lora())
    return Context(state=state, store=store, dispatch=lambda name, **kw: None,
                   runtime=Runtime(models={}, device=torch.device("cpu")))


def _run(ctx: Context, compares: MemoryCompareStore, cid: str, seeds: list[int], items: list[str],
         version: int = 1) -> CompareRecord:
    now = time.time()
    compares.put(CompareRecord(id=cid, job_id=JOB, prompt=PROMPT, items=items, mask_thresholds=[0.5] * len(items),
                               seeds=seeds, version=version, created_at=now, updated_at=now))
    compare(ctx, JOB, cid, compares=compares)
    return compares.get(JOB, cid)


def _pixels(ctx: Context, key: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(ctx.store.get(key))))


def test_base_and_trained_share_their_noise_and_differ(ctx: Context) -> None:
    compares = MemoryCompareStore()
    first = _run(ctx, compares, "c1", [0, 1, 2], ["cat", "sandwich"])
    assert first.status == CompareStatus.SUCCEEDED, first.error
    assert [r.seed for r in first.results] == [0, 1, 2]
    for r in first.results:
        base, trained = _pixels(ctx, r.base_image_key), _pixels(ctx, r.trained_image_key)
        assert base.shape == trained.shape == (64, 64, 3)
        assert not np.array_equal(base, trained)  # the trained policy changed the picture
        assert len(r.mask_keys) == 2
        for key in r.mask_keys:
            mask = _pixels(ctx, key)
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
            assert 0 < (mask == 255).mean() < 1  # a quantile cut keeps about half of the cells
    # seed 2 again in another compare: the same noise, so the same base and the same trained image
    second = _run(ctx, compares, "c2", [2, 5], [])
    assert second.status == CompareStatus.SUCCEEDED and second.results[1].mask_keys == []
    again, before = second.results[0], first.results[2]
    assert ctx.store.get(again.base_image_key) == ctx.store.get(before.base_image_key)
    assert np.abs(_pixels(ctx, again.trained_image_key).astype(int)
                  - _pixels(ctx, before.trained_image_key).astype(int)).max() <= 1  # masks recorded or not
    assert again.base_score == pytest.approx(before.base_score)
    # different seeds, different noise
    assert ctx.store.get(second.results[1].base_image_key) != ctx.store.get(before.base_image_key)


def test_a_failure_fails_the_compare_and_not_the_job(ctx: Context, tmp_path: Path) -> None:
    compares = MemoryCompareStore()
    failed = _run(ctx, compares, "c3", [0], [], version=3)  # no checkpoint object for version 3
    assert failed.status == CompareStatus.FAILED and failed.results == []
    assert failed.error is not None and failed.error.startswith("compare: BlobNotFound: ")
    assert ctx.state.get_job(JOB).status == JobStatus.SUCCEEDED
    # the failed load left no stale "version 1 is loaded" behind: version 1 is the trained policy again
    after = _run(ctx, compares, "c3b", [0], [])
    r = after.results[0]
    assert not np.array_equal(_pixels(ctx, r.base_image_key), _pixels(ctx, r.trained_image_key))


def test_a_finished_compare_is_not_computed_again(ctx: Context) -> None:
    compares = MemoryCompareStore()
    done = _run(ctx, compares, "c4", [0], [], version=3)
    compare(ctx, JOB, "c4", compares=compares)  # a redelivery
    assert compares.get(JOB, "c4") == done


class _Lost(LocalDirStore):
    """A store whose writes are refused as a fenced store refuses a task that lost its lease."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        raise LeaseLost("the lease on compare-c5 is no longer held by this task")


def test_a_lost_lease_leaves_the_compare_to_its_new_holder(ctx: Context, tmp_path: Path) -> None:
    store = _Lost(tmp_path)
    store_ckpt = ctx.store.get(keys.checkpoint_key(JOB, 1))
    (tmp_path / keys.checkpoint_key(JOB, 1)).parent.mkdir(parents=True)
    (tmp_path / keys.checkpoint_key(JOB, 1)).write_bytes(store_ckpt)
    compares = MemoryCompareStore()
    with pytest.raises(LeaseLost):
        _run(replace(ctx, store=store), compares, "c5", [0], [])
    assert compares.get(JOB, "c5").status == CompareStatus.RUNNING  # not failed: the new holder finishes it
