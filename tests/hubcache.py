"""A local Hugging Face cache in the Hub's own layout, built from the tiny model: the Hub cannot be
reached from the tests, so Hub ids resolve offline (HF_HUB_OFFLINE=1) through the real
huggingface_hub / diffusers code against this folder.

    <hf_home>/hub/models--org--tiny-sd/refs/main            -> <rev>
    <hf_home>/hub/models--org--tiny-sd/snapshots/<rev>/...  (StableDiffusionPipeline.save_pretrained)
"""

from __future__ import annotations

from pathlib import Path

REPO_ID = "org/tiny-sd"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as refs/main holds


def build_hub_cache(hf_home: Path, repo_id: str = REPO_ID, revision: str = REVISION, model=None) -> Path:
    """Write `model` (default: the tiny model) as `repo_id` at `revision` (the `main` ref) into
    `hf_home`/hub with its stock pipeline's `save_pretrained`; returns the hub cache."""
    from dfusion_core.models import build_tiny, to_diffusers_pipeline

    cache = hf_home / "hub"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    to_diffusers_pipeline(model or build_tiny()).save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return cache
