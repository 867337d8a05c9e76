"""Job presets per model: the settings a job for a model gets unless the job gives its own.

One explicit table, `MODEL_PRESETS`, keyed by model name (as `registry.MODELS`). A preset holds
JobSpec fields: top-level values (`scorer`, `eval_prompts`, `eval_seeds`, `train_eval_seeds`)
and the nested configs (`sampling`, `fusion`, `training`) as dicts of their fields. `merge`
lays a job's own values over its model's preset: a value the job gives wins, and a nested config
is merged key by key, so the job's keys win over the preset's and the preset's over the config's
defaults. `services.jobspec.JobSpec` applies it when a job is validated and records the preset's
name in the spec.

Torch-free: the API validates jobs with it. The toy values come from `toy/world.py`, where they
are measured (`TOY_SAMPLING`, `TOY_FUSION`, `TOY_TRAINING`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dfusion_core.toy import world as toyworld

#: The nested configs of a job, merged key by key.
NESTED = ("sampling", "fusion", "training")

#: Toy job fields (JobSpec): 32 samples a caption, one epoch, every held-out caption once, and the
#: before/after score on the job's own captions with 128 fresh seeds each (`train_eval_seeds`). The
#: count is sized by power: the preset gains +0.01 to +0.04 on a job's captions (bench/alignment.py,
#: the demo), and one paired sample's difference has an SD of about 0.21 (scores move in steps of
#: 0.2), so 4 captions x 128 = 512 samples give a 95 % interval of about +-0.019; at 32 seeds
#: (+-0.037) a run that gained +0.038 read as no change about half the time. It is about half the
#: demo's time: 0.75-1 s a seed on 2 cores for both policies.
#: One epoch, because a second one of D-Fusion pairs under Diffusion-DPO breaks this model: the
#: policy's denoising error on its pairs rises from about 0.021 to 0.035 during it, and the score
#: falls below the untrained model's on most seeds (bench/RESULTS.md, "The paper's protocol"); plain
#: pairs keep gaining. The preset's `sft_weight` does not prevent it: on validation noise fusion
#: read +0.035 / +0.079 after one epoch and 0.000 / -0.042 after two. `epochs` in a job asks for more.
TOY_JOB: dict[str, Any] = {
    "samples_per_prompt": toyworld.TOY_SAMPLES_PER_PROMPT,
    "epochs": 1,
    "eval_prompts": toyworld.heldout_captions(),
    "eval_seeds": 1,
    "train_eval_seeds": 128,
}


def _toy() -> dict[str, Any]:
    return {
        "scorer": toyworld.TOY,
        "sampling": dict(toyworld.TOY_SAMPLING),
        "fusion": dict(toyworld.TOY_FUSION),
        "training": dict(toyworld.TOY_TRAINING),
        **TOY_JOB,
    }


#: The `sim` model (dfusion_core/sim.py, which imports torch; its name is restated here): its own
#: scorer, and masks cut by quantile, since a random model's item maps are flat and absolute
#: thresholds would give empty masks. Everything else keeps the authors' sizes (20 steps, batches
#: of 8), which is what a sim job is for: timing the system at the paper's shapes.
SIM = "sim"
SIM_PRESET: dict[str, Any] = {"scorer": SIM, "fusion": {"mask_mode": "quantile", "mask_level": 0.5}}

#: model name -> its preset. A model without an entry (`tiny`, local folders, Hub ids) gets the
#: JobSpec defaults, which are the authors' settings for SD 2.1-base.
MODEL_PRESETS: dict[str, dict[str, Any]] = {toyworld.TOY: _toy(), SIM: SIM_PRESET}


def preset_name(model: object) -> str | None:
    """The preset a job for `model` gets: its name, or None when the model has none."""
    return model if isinstance(model, str) and model in MODEL_PRESETS else None


def merge(preset: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """The job's values over the preset's: the job's top-level values win; a nested config the job
    gives as a mapping is merged key by key (its keys win). A nested value that is not a mapping is
    left for validation to refuse.

    A job that names another `algorithm` than the preset's training takes none of the preset's
    training values: they were measured for that algorithm (the toy preset's learning rate, step
    budget and `sft_weight` are Diffusion-DPO's), so the job gets the defaults under its own."""
    out = {**preset, **job}
    for name in NESTED:
        if name in preset and isinstance(job.get(name), Mapping):
            ours, theirs = preset[name], job[name]
            other_algorithm = "algorithm" in theirs and theirs["algorithm"] != ours.get("algorithm", theirs["algorithm"])
            out[name] = dict(theirs) if other_algorithm else {**ours, **theirs}
    return out
