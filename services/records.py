"""The records a job keeps in its state store: samples, preference pairs, published checkpoints.

Workers write them and the API, the report and the export read them, each through the one
serializer here (`dump` to the JSON object the state store keeps, `load` back), instead of dicts
read with `.get(key, default)` in several places. Unknown fields are ignored on load, so a
reader one release behind a writer still works. Torch-free.
"""

from __future__ import annotations

from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    def dump(self) -> dict[str, Any]:
        """The JSON object stored for this record."""
        return self.model_dump(mode="json")

    @classmethod
    def load(cls, raw: dict[str, Any]) -> Self:
        """A record from its stored JSON object (a `pydantic.ValidationError` names a bad field)."""
        return cls.model_validate(raw)


class SampleRecord(_Record):
    """One sampled image and its trajectory; `score` is set once by the score stage."""

    id: str = Field(description="keys.sample_id(epoch, prompt_index, index)")
    epoch: int = Field(ge=0)
    prompt_index: int = Field(ge=0)
    index: int = Field(ge=0, description="the sample's index within its prompt's samples of the epoch")
    seed: int = Field(description="seed of the sample's noise stream")
    policy_version: int = Field(ge=0, description="the job's published LoRA version that sampled it")
    prompt: str
    trajectory_key: str = Field(description="ref of the trajectory: `bundle key#sample id`, a member of its sample "
                                            "task's bundle (workers.keys.member_ref); a plain key for a job stored "
                                            "before bundles")
    image_key: str
    score: float | None = None  # the scorer's value on the image; None until scored


class PairRecord(_Record):
    """One preference pair: winner = the target (a fused trajectory, or for plain pairs the
    reference sample itself), loser = the base sample.

    `target_score` is the scorer's value on the target's own image (for plain pairs, the
    reference's score); None until the target-scoring task ran. `trained` is whether the epoch's
    pair filter kept the pair for training; None until the epoch's train stage ran.
    """

    id: str = Field(description="keys.pair_id(epoch, prompt_index, index)")
    epoch: int = Field(ge=0)
    prompt_index: int = Field(ge=0)
    index: int = Field(ge=0)
    prompt: str
    policy_version: int = Field(ge=0)
    reference: str = Field(description="sample id of the reference")
    base: str = Field(description="sample id of the base (the loser)")
    reference_score: float
    base_score: float
    reference_image_key: str
    base_image_key: str
    base_trajectory_key: str = Field(description="ref of the base's trajectory (SampleRecord.trajectory_key)")
    target_key: str = Field(description="ref of the winner's trajectory: `bundle key#pair id` of its fuse chunk's "
                                        "target bundle, or a plain pair's winning sample's ref")
    target_image_key: str
    mask_key: str | None = None  # the union item mask; None for plain pairs
    target_score: float | None = None
    trained: bool | None = None

    @property
    def fused(self) -> bool:
        return self.mask_key is not None


class CheckpointRecord(_Record):
    """A published LoRA version of the job (version e+1 is the result of training epoch e)."""

    version: int = Field(ge=0)
    key: str = Field(description="object key of the LoRA safetensors")
    epoch: int | None = None  # the epoch whose training produced it


R = TypeVar("R", bound=_Record)


def load_all(cls: type[R], raw: dict[str, dict[str, Any]]) -> list[R]:
    """Records from a state listing (id -> stored object), in id order."""
    return [cls.load(raw[k]) for k in sorted(raw)]
