"""The exact outputs of a succeeded job, checked against its spec: every sample, pair, optimizer
step, checkpoint and stored object once (in the store and in the job's stored-bytes ledger), nothing
missing, nothing twice. The reliability suite's check after each fault, and the chaos soak's
(bench/chaos_watch.py) after each job.

Raises AssertionError (plain `assert`s: run it without -O) naming the first difference.
"""

from __future__ import annotations

from typing import Any

from dfusion_core.storage import BlobStore
from services.jobspec import JobSpec
from services.records import PairRecord
from services.state.protocol import JobStore
from workers import keys
from workers.flow import JobFlow


def kept_per_epoch(state: JobStore, job_id: str, spec: JobSpec) -> list[int]:
    """Pairs per epoch that the train stage marked `trained` (all pairs carry the flag once trained)."""
    pairs = [PairRecord.load(r) for r in state.list_pairs(job_id).values()]
    assert all(p.trained is not None and p.target_score is not None for p in pairs), "a pair was never trained"
    return [sum(1 for p in pairs if p.epoch == e and p.trained) for e in range(spec.epochs)]


def expected_keys(job_id: str, spec: JobSpec, kept: list[int]) -> set[str]:
    """Every object a successful job stores; trainer state versions count optimizer steps."""
    from dfusion_core.checkpoint import STATE_NAME, WEIGHTS_NAME  # torch: only once a check runs

    jf = JobFlow.of(spec)
    out, version = set(), 0
    for e in range(spec.epochs):
        for p in range(jf.prompts):
            out |= _prompt_keys(job_id, jf, e, p)
        version += spec.training.epoch_steps(kept[e])
        unit = keys.trainer_state_prefix(job_id, e)
        out |= {f"{unit}/metrics.json", f"{unit}/{version}/{WEIGHTS_NAME}", f"{unit}/{version}/{STATE_NAME}"}
        out.add(keys.checkpoint_key(job_id, e + 1))
    return out


def _prompt_keys(job_id: str, jf: JobFlow, epoch: int, prompt: int) -> set[str]:
    """A prompt's objects in an epoch: a trajectory bundle and a PNG per sample for each sample
    batch; for D-Fusion pairs, a target bundle per fuse chunk and a target PNG and a mask PNG per
    pair (a plain pair's winner is a sample: it stores nothing of its own)."""
    out = {keys.sample_bundle_key(job_id, epoch, prompt, b) for b in range(jf.batches)}
    out |= {keys.image_key(job_id, keys.sample_id(epoch, prompt, i)) for i in range(jf.samples_per_prompt)}
    if jf.plain:
        return out
    out |= {keys.target_bundle_key(job_id, epoch, prompt, c) for c in range(jf.chunks)}
    for k in range(jf.pairs_per_prompt):
        pid = keys.pair_id(epoch, prompt, k)
        out |= {keys.target_image_key(job_id, pid), keys.mask_key(job_id, pid)}
    return out


def assert_exact_outputs(state: JobStore, store: BlobStore, job_id: str, spec_dict: dict[str, Any]) -> None:
    """Succeeded with exactly the expected samples, pairs, steps, checkpoints and objects (in
    `state` and `store`): nothing missing, nothing twice, every training step applied once (trainer
    versions have no gaps)."""
    spec = JobSpec.model_validate(spec_dict)
    job = state.get_job(job_id)
    assert job.status.value == "succeeded", (job.status, job.error)
    n, pairs_per_prompt = spec.samples_per_prompt, spec.expected_counts().pairs_per_prompt
    units = [(e, p) for e in range(spec.epochs) for p in range(len(spec.prompts))]
    assert set(state.list_samples(job_id)) == {keys.sample_id(e, p, i) for e, p in units for i in range(n)}
    assert set(state.list_pairs(job_id)) == {keys.pair_id(e, p, k) for e, p in units for k in range(pairs_per_prompt)}
    kept = kept_per_epoch(state, job_id, spec)
    metrics = state.get_metrics(job_id)
    assert [m["pairs_trained"] for m in metrics] == kept
    assert [m["optimizer_steps"] for m in metrics] == [spec.training.epoch_steps(k) for k in kept]
    steps = sum(m["optimizer_steps"] for m in metrics)
    assert state.get_counts(job_id) == {**spec.expected_counts().total, "trained_steps": steps}
    assert [c["version"] for c in state.list_checkpoints(job_id)] == list(range(1, spec.epochs + 1))
    assert state.policy_version(job_id) == spec.epochs
    assert_stored(state, store, job_id, expected_keys(job_id, spec, kept))


def assert_stored(state: JobStore, store: BlobStore, job_id: str, expected: set[str]) -> None:
    """The store holds exactly `expected` under the job's prefix, and the job's ledger of stored
    bytes (JobStore.record_objects) holds each of them once, at its size, whatever was redone.

    Sizes come from the store's listing (`BlobStore.sizes`), not from reading each object back:
    the ledger counts bytes, not contents, and a job's objects (checkpoints among them) are large."""
    sizes = store.sizes(keys.job_prefix(job_id))
    assert set(sizes) == expected, (sorted(expected - set(sizes)), sorted(set(sizes) - expected))
    job = state.get_job(job_id)
    assert (job.stored_bytes, job.stored_objects) == (sum(sizes.values()), len(sizes))
