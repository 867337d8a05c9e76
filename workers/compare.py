"""The compare task's body: a finished job's policy version beside its base on the same noise.

validate (the record is queued or running) -> load the policy version -> one core call
(`dfusion_core.compare.compare`) -> store the images and masks under keys derived from (job,
compare, seed) -> the record succeeded with its results. A compare is not a unit of the job's flow:
it never advances the job, and its failure fails the compare, never the job. Infrastructure errors
(Redis or the object store away) are raised for the task's retries; anything else is permanent.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import torch

from dfusion_core.compare import Comparison
from dfusion_core.compare import compare as compare_policies
from dfusion_core.items import map_items
from dfusion_core.storage import BlobStore
from services.compare import CompareCreate, CompareRecord, CompareStatus, SeedResult, resolve
from services.jobspec import JobSpec
from services.queue import COMPARE
from services.state import JobStatus, LeaseLost, StateUnavailable
from services.state.compares import CompareStore, set_status
from services.storage import StorageUnavailable
from workers import keys
from workers.images import png_bytes
from workers.stages.common import Context, failure_reason, put_all

log = logging.getLogger(__name__)

#: Errors the task retries with backoff (the same kinds as the job stages'); others fail the compare.
TRANSIENT = (StorageUnavailable, StateUnavailable, ConnectionError, TimeoutError)
#: The job id of a run folder (`workers.embedded.run_embedded`'s default): its keys map onto the folder.
LOCAL_JOB = "local"


def compare(ctx: Context, job_id: str, compare_id: str, *, compares: CompareStore) -> None:
    record = compares.get(job_id, compare_id)
    if record.status.terminal:
        log.info("compare %s of job %s is %s already", compare_id, job_id, record.status.value)
        return
    set_status(compares, job_id, compare_id, CompareStatus.RUNNING)
    try:
        results = _compute(ctx, record)
    except (*TRANSIENT, LeaseLost):  # retried; or another delivery holds the compare now: its outcome, not ours
        raise
    except Exception as exc:
        log.exception("compare %s of job %s failed", compare_id, job_id)
        set_status(compares, job_id, compare_id, CompareStatus.FAILED, error=failure_reason(COMPARE, exc))
        return
    set_status(compares, job_id, compare_id, CompareStatus.SUCCEEDED, results=results)


def _compute(ctx: Context, record: CompareRecord) -> list[SeedResult]:
    spec = JobSpec.model_validate(ctx.state.get_job(record.job_id).spec)
    with ctx.runtime.lock:
        model = ctx.runtime.policy(spec.model_ref, ctx.store, record.job_id, record.version)
        items = map_items(model.tokenizer, record.prompt, record.items, record.mask_thresholds) if record.items else []
        result = compare_policies(model, ctx.runtime.scorer(spec.scorer), record.prompt, record.seeds, spec.sampling,
                                  items=items, fusion=spec.fusion)
    objects, results = _objects(record, result)
    put_all(ctx, objects)
    return results


def _objects(record: CompareRecord, result: Comparison) -> tuple[list[tuple[str, bytes, str]], list[SeedResult]]:
    objects: list[tuple[str, bytes, str]] = []
    results = []
    size = tuple(result.trained_images.shape[1:3])
    for k, seed in enumerate(result.seeds):
        base_key = keys.compare_image_key(record.job_id, record.id, seed, "base")
        trained_key = keys.compare_image_key(record.job_id, record.id, seed, "trained")
        objects += [(base_key, png_bytes(result.base_images[k]), "image/png"),
                    (trained_key, png_bytes(result.trained_images[k]), "image/png")]
        mask_keys = []
        if result.item_masks is not None:
            for i, mask in enumerate(result.item_masks[k]):
                mask_keys.append(keys.compare_mask_key(record.job_id, record.id, seed, i))
                objects.append((mask_keys[-1], png_bytes(mask_picture(mask, size)), "image/png"))
        results.append(SeedResult(seed=seed, base_image_key=base_key, trained_image_key=trained_key,
                                  base_score=float(result.base_scores[k]), trained_score=float(result.trained_scores[k]),
                                  mask_keys=mask_keys))
    return objects, results


def mask_picture(mask: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """A binary mask [R, R'] as a uint8 [H, W] picture (nearest upsampling: each cell stays a block)."""
    up = torch.nn.functional.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest")[0, 0]
    return (up * 255).to(torch.uint8)


def compare_run_folder(out: Path, body: CompareCreate, *, models: dict[str, str] | None = None,
                       device: str | None = None) -> tuple[CompareRecord, BlobStore]:
    """A compare in this process on the folder of a `dfusion run` / `dfusion demo` (embedded mode: the
    same task body on in-memory state; its images land under `out/compare/<id>/`). Returns the
    record and the folder's store, which holds its objects under the record's keys."""
    from services.state.compares import MemoryCompareStore
    from services.state.memory import MemoryJobStore
    from workers.embedded import JobDirStore
    from workers.runtime import Runtime, pick_device

    spec = JobSpec.model_validate_json((out / "spec.json").read_text())
    checkpoints = out / "checkpoints"
    versions = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []
    state = MemoryJobStore()
    state.create_job(LOCAL_JOB, LOCAL_JOB, spec.model_dump(mode="json"))
    state.set_status(LOCAL_JOB, JobStatus.RUNNING)
    job = state.set_status(LOCAL_JOB, JobStatus.SUCCEEDED)  # a run folder holds what its run published
    record = resolve(job, versions, body, uuid.uuid4().hex, time.time())
    compares, store = MemoryCompareStore(), JobDirStore(out, LOCAL_JOB)
    compares.put(record)
    ctx = Context(state=state, store=store, dispatch=lambda name, **kw: None,
                  runtime=Runtime(models=dict(models or {}), device=pick_device(device)))
    compare(ctx, LOCAL_JOB, record.id, compares=compares)
    return compares.get(LOCAL_JOB, record.id), store
