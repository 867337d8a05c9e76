"""Typed records through both state backends (real Redis and the in-memory one), and the counts a
spec expects: the records the workers write read back equal, and updates merge the same way."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.jobspec import JobSpec
from services.records import CheckpointRecord, PairRecord, SampleRecord, load_all
from services.state import JobStore, StateError


def _sample(i: int, score: float | None = None) -> SampleRecord:
    sid = f"e0-p000-s{i:03d}"
    return SampleRecord(id=sid, epoch=0, prompt_index=0, index=i, seed=100 + i, policy_version=0, prompt="a cat",
                        trajectory_key=f"jobs/j/e0/samples/e0-p000-b000.safetensors#{sid}", image_key=f"jobs/j/e0/images/{sid}.png",
                        score=score)


def _pair(k: int, target_score: float | None = None, mask: bool = True) -> PairRecord:
    pid = f"e0-p000-k{k:03d}"
    return PairRecord(
        id=pid, epoch=0, prompt_index=0, index=k, prompt="a cat", policy_version=0, reference="e0-p000-s000",
        base=f"e0-p000-s{k + 2:03d}", reference_score=0.5, base_score=0.1 * k, reference_image_key="r.png",
        base_image_key="b.png", base_trajectory_key="b.safetensors#s1", target_key=f"c000.targets.safetensors#{pid}",
        target_image_key=f"{pid}.target.png", mask_key=f"{pid}.mask.png" if mask else None, target_score=target_score)


def test_sample_records_round_trip_and_first_score_counts(store: JobStore, job: str) -> None:
    rec = _sample(0)
    assert store.put_sample(job, rec.id, rec.dump())
    assert SampleRecord.load(store.get_sample(job, rec.id)) == rec
    assert store.update_sample(job, rec.id, {"score": 0.123456789012345678})
    assert not store.update_sample(job, rec.id, {"score": 0.25})
    assert SampleRecord.load(store.get_sample(job, rec.id)) == rec.model_copy(update={"score": 0.25})
    assert store.get_counts(job)["scored"] == 1
    with pytest.raises(StateError):
        store.update_sample(job, "e0-p000-s999", {"score": 1.0})


def test_pair_updates_merge_target_score_and_trained(store: JobStore, job: str) -> None:
    fused, plain = _pair(0), _pair(1, target_score=0.4, mask=False)
    for p in (fused, plain):
        assert store.put_pair(job, p.id, p.dump())
    assert not store.put_pair(job, fused.id, _pair(0, target_score=9.0).dump())  # insert-once
    assert store.update_pair(job, fused.id, {"target_score": 0.3})  # first target score
    assert not store.update_pair(job, fused.id, {"target_score": 0.3})  # a redelivered scoring task
    assert not store.update_pair(job, plain.id, {"trained": True})
    assert not store.update_pair(job, fused.id, {"trained": False})
    got = load_all(PairRecord, store.list_pairs(job))
    assert got == [fused.model_copy(update={"target_score": 0.3, "trained": False}),
                   plain.model_copy(update={"trained": True})]
    assert got[0].fused and not got[1].fused
    assert store.get_counts(job)["pairs"] == 2  # updates move no counter
    with pytest.raises(StateError):
        store.update_pair(job, "e0-p000-k999", {"target_score": 1.0})


def test_checkpoint_records(store: JobStore, job: str) -> None:
    rec = CheckpointRecord(version=1, key="jobs/j/checkpoints/1/pytorch_lora_weights.safetensors", epoch=0)
    assert store.put_checkpoint(job, 1, rec.dump())
    assert [CheckpointRecord.load(c) for c in store.list_checkpoints(job)] == [rec]


def test_records_ignore_unknown_fields_and_name_bad_ones() -> None:
    raw = {**_pair(0).dump(), "added_by_a_newer_writer": 1}
    assert PairRecord.load(raw) == _pair(0)
    with pytest.raises(ValidationError, match="base_score"):
        PairRecord.load({**_pair(0).dump(), "base_score": "high"})
    with pytest.raises(ValidationError):
        SampleRecord.load({**_sample(0).dump(), "score": float("nan")})


@pytest.mark.parametrize("spp, prompts, epochs", [(4, 1, 1), (8, 2, 3), (12, 3, 2)])
def test_expected_counts(spp: int, prompts: int, epochs: int) -> None:
    spec = JobSpec.model_validate({"prompts": [{"text": f"a cat {i}"} for i in range(prompts)],
                                   "samples_per_prompt": spp, "epochs": epochs, "training": {"pairs": "plain"}})
    counts = spec.expected_counts()
    # the pair count is dfusion_core.pairs': n/2 per prompt (n/4 references used twice, n/2 bases)
    assert counts.pairs_per_prompt == spp // 2
    assert counts.per_epoch == {"samples": prompts * spp, "scored": prompts * spp, "pairs": prompts * spp // 2}
    assert counts.total == {k: v * epochs for k, v in counts.per_epoch.items()}
    assert counts.total["samples"] == spec.total_samples
