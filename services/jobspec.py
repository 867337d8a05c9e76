"""What a job asks for: prompts with item words, model, budget, hyperparameters.

Pure pydantic, shared by the API (validation at the edge) and the workers (the spec they run).
Checks here are those that need no tokenizer; the workers re-check items with the model's own
tokenizer and fail the job with a readable reason if a word does not map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dfusion_core.config import FusionConfig, SamplingConfig, TrainingConfig
from dfusion_core.hub import is_hub_id
from dfusion_core.pairs import pairs_per_prompt
from dfusion_core.presets import MODEL_PRESETS, NESTED, merge, preset_name
from dfusion_core.registry import ModelRef

MAX_PROMPT_CHARS = 300
MAX_PROMPTS = 256
MAX_SAMPLES_PER_PROMPT = 256
MAX_EPOCHS = 100
MAX_TRAIN_EVAL_SEEDS = 256
#: The model and scorer of a job that names none: the random `tiny` pair (dfusion_core/registry.py).
#: It takes any prompt and needs no weights, so a job checks the plumbing anywhere; its scores mean
#: nothing. Alignment is measured with `toy` (toy-world captions only) or a real model (README).
DEFAULT_MODEL = "tiny"
DEFAULT_SCORER = "tiny"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_REVISION = re.compile(r"^[\w.-][\w./-]{0,127}$")  # a branch, tag or commit of a Hub repo
_VARIANT = re.compile(r"^[A-Za-z0-9_]{1,32}$")  # a weights variant, e.g. fp16
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
#: Where a job's curves go besides its metrics (workers/tracking.py): report_to -> (the packages it
#: imports, the pip extra that installs them). Checked where the tracker starts, not here: the API
#: need not have the libraries the workers have.
TRACKING_EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), "tracking"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
}
REPORT_TO = ("none", *TRACKING_EXTRAS)


def missing_tracking_packages(report_to: str) -> str | None:
    """Why this process cannot track to `report_to` (a package of its extra is missing), else None."""
    import importlib.util

    modules, extra = TRACKING_EXTRAS.get(report_to, ((), ""))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"{report_to!r} needs the {' and '.join(missing)} package: pip install 'dfusion[{extra}]'"


def words(text: str) -> list[str]:
    """Lower-case words, as CLIP's pre-tokenizer splits them (letters/digits; punctuation dropped)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class ExpectedCounts:
    """How many records a job makes, per epoch and in all: the final values of JobState's
    `samples`, `scored` and `pairs` counters (optimizer steps depend on the pair filter)."""

    epochs: int
    prompts: int
    samples_per_prompt: int
    pairs_per_prompt: int

    @property
    def per_epoch(self) -> dict[str, int]:
        samples = self.prompts * self.samples_per_prompt
        return {"samples": samples, "scored": samples, "pairs": self.prompts * self.pairs_per_prompt}

    @property
    def total(self) -> dict[str, int]:
        return {name: n * self.epochs for name, n in self.per_epoch.items()}


class PromptSpec(BaseModel):
    """One prompt and the item words whose cross-attention mask guides fusion."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    text: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="the prompt")
    items: list[str] = Field(default_factory=list, max_length=8, description="item words of the prompt")
    mask_thresholds: list[float] = Field(default_factory=list, max_length=8, description="one per item, in [0, 1]")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt text is blank")
        return v

    @field_validator("mask_thresholds")
    @classmethod
    def _thresholds(cls, v: list[float]) -> list[float]:
        for t in v:
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold {t} is outside [0, 1]")
        return v

    @model_validator(mode="after")
    def _items(self) -> PromptSpec:
        if len(self.items) != len(self.mask_thresholds):
            raise ValueError(
                f"mask_thresholds has {len(self.mask_thresholds)} values for {len(self.items)} items; give one per item"
            )
        prompt_words = words(self.text)
        for item in self.items:
            item_words = words(item)
            if not item_words:
                raise ValueError(f"item {item!r} has no word in it")
            n = len(item_words)
            if not any(prompt_words[i : i + n] == item_words for i in range(len(prompt_words) - n + 1)):
                raise ValueError(f"item {item!r} is not a word of the prompt {self.text!r}")
        return self


class JobSpec(BaseModel):
    """A whole job. Defaults are the authors' settings, under the model's preset
    (`dfusion_core.presets.MODEL_PRESETS`): a job for a model with a preset gets the preset's values
    for the fields it leaves out, key by key inside `sampling`, `fusion` and `training`, and names
    the preset in `preset`. The validated spec holds the values used, so validating it again gives
    the same spec."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prompts: list[PromptSpec] = Field(..., min_length=1, max_length=MAX_PROMPTS)
    model: str = Field(DEFAULT_MODEL, description="'tiny', 'tiny-sdxl', 'toy', 'sim', a model name registered in the workers' settings "
                                                   "or a Hugging Face Hub id ('owner/name') of an SD 1.x / 2.x or SDXL pipeline")
    revision: str | None = Field(None, description="Hub ids: the branch, tag or commit to load; None = main")
    variant: str | None = Field(None, description="weights variant of the model's files, e.g. 'fp16'; None = the default")
    samples_per_prompt: int = Field(8, ge=4, le=MAX_SAMPLES_PER_PROMPT, description="positive multiple of 4")
    epochs: int = Field(1, ge=1, le=MAX_EPOCHS)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    scorer: str = Field(DEFAULT_SCORER, description="alignment scorer: 'tiny', 'toy', 'sim', a registered name or the Hub "
                                                     "id of a transformers CLIP model")
    eval_prompts: list[str] = Field(default_factory=list, max_length=64, description="held-out prompts; [] = shipped test split")
    eval_seeds: int = Field(2, ge=1, le=16, description="samples per held-out prompt")
    train_eval_seeds: int = Field(
        0, ge=0, le=MAX_TRAIN_EVAL_SEEDS,
        description="before/after evaluation on the job's own prompts: each sampled with this many fresh seeds by "
                    "every policy version and by the untrained model on the same noise (epoch metrics eval_score, "
                    "eval_score_base and the paired 95 % CI of the difference); 0 = off")
    preset: str | None = Field(
        None, description="the model's preset applied under the job's own values (dfusion_core/presets.py); left "
                          "out: the model's own, if it has one; null: none")
    report_to: str = Field("none", description="experiment tracking of the training steps, epoch scores and a "
                                               "few pairs: 'none', 'tensorboard', 'wandb' or 'mlflow' (each an "
                                               "optional extra; where the files go: README, Experiment tracking)")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """The model's preset under the job's own values (a no-op on a spec validated before)."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        own = preset_name(data.get("model", DEFAULT_MODEL))
        data.setdefault("preset", own)
        if own is None or data["preset"] != own:
            return data  # none asked for, or not the model's (refused below)
        for key in NESTED:  # a config given as a model counts with the fields it was given
            if isinstance(data.get(key), BaseModel):
                data[key] = data[key].model_dump(exclude_unset=True)
        return merge(MODEL_PRESETS[own], data)

    @field_validator("preset")
    @classmethod
    def _preset_of_the_model(cls, v: str | None, info: ValidationInfo) -> str | None:
        own = preset_name(info.data.get("model"))
        if v is not None and "model" in info.data and v != own:
            has = f"has the preset {own!r}" if own else "has no preset"
            raise ValueError(f"{v!r} does not apply to model {info.data['model']!r}, which {has}; "
                             "leave preset out for the model's own, or set it to null for none")
        return v

    @field_validator("model", "scorer")
    @classmethod
    def _name(cls, v: str) -> str:
        if (not _MODEL_NAME.match(v) or ".." in v) and not is_hub_id(v):
            raise ValueError(f"{v!r} is neither a model name (letters, digits, '_', '.', '-') nor a Hub id "
                             "('owner/name'); no paths")
        return v

    @field_validator("report_to")
    @classmethod
    def _report_to(cls, v: str) -> str:
        if v not in REPORT_TO:
            raise ValueError(f"report_to must be one of {', '.join(map(repr, REPORT_TO))}, got {v!r}")
        return v

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        if v is not None and (not _REVISION.match(v) or ".." in v):
            raise ValueError(f"{v!r} is not a branch, tag or commit (letters, digits, '_', '.', '-', '/')")
        return v

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: str | None) -> str | None:
        if v is not None and not _VARIANT.match(v):
            raise ValueError(f"{v!r} is not a weights variant such as 'fp16' (letters, digits, '_')")
        return v

    @field_validator("samples_per_prompt")
    @classmethod
    def _multiple_of_4(cls, v: int) -> int:
        if v % 4:
            raise ValueError(f"samples_per_prompt must be a positive multiple of 4, got {v}")
        return v

    @model_validator(mode="after")
    def _items_for_fusion(self) -> JobSpec:
        if self.training.pairs == "fusion":
            for i, p in enumerate(self.prompts):
                if not p.items:
                    raise ValueError(f"prompts[{i}] has no items; D-Fusion pairs need at least one item word")
        return self

    @model_validator(mode="after")
    def _revision_needs_hub_id(self) -> JobSpec:
        if self.revision is not None and not is_hub_id(self.model):
            raise ValueError(f"revision {self.revision!r} applies to Hub ids ('owner/name'), not to {self.model!r}")
        return self

    @property
    def model_ref(self) -> ModelRef:
        """The model with its revision and variant, as workers load and key it."""
        return ModelRef(self.model, self.revision, self.variant)

    @property
    def total_samples(self) -> int:
        return len(self.prompts) * self.samples_per_prompt * self.epochs

    def expected_counts(self) -> ExpectedCounts:
        """Samples, scores and pairs this job makes (pairs per prompt: `dfusion_core.pairs`)."""
        return ExpectedCounts(self.epochs, len(self.prompts), self.samples_per_prompt,
                              pairs_per_prompt(self.samples_per_prompt))
