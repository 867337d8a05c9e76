"""The fuse stage: select a prompt's pairs and store one chunk of them, as D-Fusion targets (scored
next by score_targets; the chunk's target trajectories in one bundle) or as plain pairs, whose
winner is an already scored sample."""

from __future__ import annotations

from dfusion_core import pipeline
from dfusion_core.items import map_items
from dfusion_core.pairs import PairPlan, select_fusion_pairs, select_plain_pairs
from dfusion_core.trajectories import pack_trajectories
from services.jobspec import JobSpec
from services.records import PairRecord, SampleRecord
from workers import flow, keys
from workers.images import mask_image, png_bytes
from workers.stages.common import Context, advance, job_spec, load_trajectories, put_all


def _prompt_samples(ctx: Context, job_id: str, spec: JobSpec, epoch: int, prompt: int) -> list[SampleRecord]:
    raw = ctx.state.get_samples(job_id, [keys.sample_id(epoch, prompt, i) for i in range(spec.samples_per_prompt)])
    records = [None if r is None else SampleRecord.load(r) for r in raw]
    missing = [i for i, r in enumerate(records) if r is None or r.score is None]
    if missing:
        raise RuntimeError(f"samples {missing} of prompt {prompt} are not scored yet")
    return records  # type: ignore[return-value]


def fuse(ctx: Context, job_id: str, epoch: int, prompt: int, chunk: int) -> None:
    """Select the prompt's pairs and store this chunk's: D-Fusion targets (then scored by
    score_targets), or plain pairs, whose winner is a scored sample already."""
    spec = job_spec(ctx, job_id)
    if spec is None:
        return
    jf = flow.JobFlow.of(spec)
    records = _prompt_samples(ctx, job_id, spec, epoch, prompt)
    scores = [r.score for r in records if r.score is not None]  # all of them: _prompt_samples checked
    plans = (select_plain_pairs if jf.plain else select_fusion_pairs)(scores)
    plans = [plans[k] for k in jf.chunk_range(chunk)]
    if jf.plain:
        ctx.state.put_pairs(job_id, dict(
            _pair_record(plan, records, target_key=records[plan.reference].trajectory_key,
                         target_image_key=records[plan.reference].image_key, mask_key=None,
                         target_score=records[plan.reference].score) for plan in plans))
    else:
        _fuse_chunk(ctx, job_id, spec, prompt, chunk, plans, records)
    advance(ctx, job_id, jf, flow.Fused(epoch, prompt, chunk))


def _fuse_chunk(ctx: Context, job_id: str, spec: JobSpec, prompt: int, chunk: int, plans: list[PairPlan],
                records: list[SampleRecord]) -> None:
    """Fuse the pairs under the policy version that sampled them; store the chunk's targets (one
    bundle), their images and masks, and the pair records."""
    epoch = records[0].epoch
    trajs = load_trajectories(ctx, [records[i].trajectory_key for p in plans for i in (p.reference, p.base)])
    ps = spec.prompts[prompt]
    with ctx.runtime.lock:
        model = ctx.runtime.policy(spec.model_ref, ctx.store, job_id, epoch)
        items = map_items(model.tokenizer, ps.text, ps.items, ps.mask_thresholds)
        fused = pipeline.fuse_pairs(model, trajs[0::2], trajs[1::2], [items] * len(plans), spec.fusion)
    bundle = keys.target_bundle_key(job_id, epoch, prompt, chunk)
    pids = [keys.pair_id(epoch, prompt, plan.index) for plan in plans]
    objects = [(bundle, pack_trajectories({pid: fp.target for pid, fp in zip(pids, fused, strict=True)}),
                "application/octet-stream")]
    for pid, fp in zip(pids, fused, strict=True):
        assert fp.target.image is not None
        height, width = fp.target.image.shape[:2]
        mask = mask_image(fp.masks, fp.mask_resolution, (height, width))
        objects += [(keys.target_image_key(job_id, pid), png_bytes(fp.target.image), "image/png"),
                    (keys.mask_key(job_id, pid), png_bytes(mask), "image/png")]
    put_all(ctx, objects)
    ctx.state.put_pairs(job_id, dict(
        _pair_record(plan, records, target_key=keys.member_ref(bundle, pid),
                     target_image_key=keys.target_image_key(job_id, pid), mask_key=keys.mask_key(job_id, pid))
        for pid, plan in zip(pids, plans, strict=True)))


def _pair_record(plan: PairPlan, records: list[SampleRecord], *, target_key: str, target_image_key: str,
                 mask_key: str | None, target_score: float | None = None) -> tuple[str, dict]:
    """(pair id, the pair's record) of `plan` over the prompt's sample `records`."""
    ref, base = records[plan.reference], records[plan.base]
    assert ref.score is not None and base.score is not None
    pid = keys.pair_id(base.epoch, base.prompt_index, plan.index)
    return pid, PairRecord(
        id=pid, epoch=base.epoch, prompt_index=base.prompt_index, index=plan.index, prompt=base.prompt,
        policy_version=base.policy_version, reference=ref.id, base=base.id, reference_score=ref.score,
        base_score=base.score, reference_image_key=ref.image_key, base_image_key=base.image_key,
        base_trajectory_key=base.trajectory_key, target_key=target_key, target_image_key=target_image_key,
        mask_key=mask_key, target_score=target_score,
    ).dump()
