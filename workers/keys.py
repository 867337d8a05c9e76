"""Deterministic object keys, record ids and seeds: (job, epoch, index) -> key, so a retried task
overwrites its own objects instead of adding new ones, and redraws the same noise.

Trajectories are stored in bundles, one per task (`dfusion_core.trajectories.pack_trajectories`);
a record names one by its ref, `key#member` (`member_ref`, `split_ref`)."""

from __future__ import annotations

import hashlib

from services.state.types import objects_prefix

#: Between an object key and a bundle member in a trajectory ref; object keys never hold it
#: (`dfusion_core.storage.check_key`), so the first one splits a ref.
REF_SEP = "#"


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from its parts (e.g. job seed, "sample", epoch, prompt, index)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def job_prefix(job_id: str) -> str:
    """Where the job's objects go: the prefix purge and the stored-bytes ledger hold them to."""
    return objects_prefix(job_id)


def sample_id(epoch: int, prompt: int, index: int) -> str:
    return f"e{epoch}-p{prompt:03d}-s{index:03d}"


def pair_id(epoch: int, prompt: int, index: int) -> str:
    return f"e{epoch}-p{prompt:03d}-k{index:03d}"


def sample_bundle_key(job_id: str, epoch: int, prompt: int, batch: int) -> str:
    """The trajectories of sample batch `batch` of a prompt: one bundle, members by sample id."""
    return f"{job_prefix(job_id)}e{epoch}/samples/e{epoch}-p{prompt:03d}-b{batch:03d}.safetensors"


def image_key(job_id: str, sid: str) -> str:
    return f"{job_prefix(job_id)}{sid.split('-')[0]}/images/{sid}.png"


def target_bundle_key(job_id: str, epoch: int, prompt: int, chunk: int) -> str:
    """The fused targets of fuse chunk `chunk` of a prompt: one bundle, members by pair id."""
    return f"{job_prefix(job_id)}e{epoch}/pairs/e{epoch}-p{prompt:03d}-c{chunk:03d}.targets.safetensors"


def target_image_key(job_id: str, pid: str) -> str:
    return f"{job_prefix(job_id)}{pid.split('-')[0]}/pairs/{pid}.target.png"


def mask_key(job_id: str, pid: str) -> str:
    return f"{job_prefix(job_id)}{pid.split('-')[0]}/pairs/{pid}.mask.png"


def member_ref(key: str, member: str) -> str:
    """A trajectory's ref: member `member` of the bundle stored at `key` (`key#member`)."""
    if not member or REF_SEP in key:
        raise ValueError(f"a ref joins a key without {REF_SEP!r} and a non-empty member, got {key!r}, {member!r}")
    return f"{key}{REF_SEP}{member}"


def split_ref(ref: str) -> tuple[str, str | None]:
    """(object key, bundle member) of a trajectory ref; the member is None for a plain key, a whole
    single-trajectory object (what jobs stored before trajectories were bundled)."""
    key, sep, member = ref.partition(REF_SEP)
    if sep and not member:
        raise ValueError(f"trajectory ref {ref!r} names no member after {REF_SEP!r}")
    return key, member if sep else None


def checkpoint_key(job_id: str, version: int) -> str:
    return f"{job_prefix(job_id)}checkpoints/{version}/pytorch_lora_weights.safetensors"


def train_eval_base_key(job_id: str) -> str:
    """The untrained model's per-sample scores on the job's own prompts (the train-caption evaluation)."""
    return f"{job_prefix(job_id)}eval/train_captions_base.json"


def trainer_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}trainer"


def prompt_unit(epoch: int, prompt: int) -> str:
    """A prompt's share of an epoch (its samples, scores and pairs)."""
    return f"e{epoch}-p{prompt:03d}"


def train_unit(epoch: int) -> str:
    """The training unit of an epoch: every pair of every prompt, one unit per epoch."""
    return f"e{epoch}"


def trainer_state_prefix(job_id: str, epoch: int) -> str:
    """Where train(epoch) saves the trainer (LoRA + optimizer state) that train(epoch + 1) resumes."""
    return f"{trainer_prefix(job_id)}/{train_unit(epoch)}"


def compare_image_key(job_id: str, compare_id: str, seed: int, role: str) -> str:
    """A compare's image of one seed: `role` is `base` or `trained` (services.compare)."""
    return f"{job_prefix(job_id)}compare/{compare_id}/s{seed}.{role}.png"


def compare_mask_key(job_id: str, compare_id: str, seed: int, item: int) -> str:
    """The trained model's mask of item `item` (its index in the request) for one seed of a compare."""
    return f"{job_prefix(job_id)}compare/{compare_id}/s{seed}.mask{item}.png"
