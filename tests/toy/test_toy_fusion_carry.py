"""scripts/toy_fusion_carry.py: how far a fused target moves from its base toward its reference."""

from __future__ import annotations

import numpy as np
import torch

from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.toy import model as toy_model
from dfusion_core.toy import world as tw
from tests.toy.scriptload import load_script


def _script():
    return load_script("scripts/toy_fusion_carry.py")


def _record(base: float, reference: float, target: float) -> dict:
    obj = lambda v: [v, 10.0, 10.0]  # noqa: E731  # only the area moves
    part = {"pixels": 10, "target_base": abs(target - base), "reference_base": abs(reference - base)}
    return {"base": [obj(base), None], "reference": [obj(reference), None], "target": [obj(target), None],
            "objects": part, "rest": {"pixels": 30, "target_base": 0.0, "reference_base": 1.0}}


def test_carry_is_one_for_a_target_that_became_its_reference_and_zero_for_its_base():
    carry = _script()
    took = carry.summarise([_record(50, 150, 150), _record(200, 100, 100)])
    kept = carry.summarise([_record(50, 150, 50), _record(200, 100, 200)])
    halfway = carry.summarise([_record(50, 150, 100), _record(200, 100, 140)])
    assert took["carry"]["area"]["carry"] == 1.0 and took["carry"]["area"]["past_half"] == 1.0
    assert kept["carry"]["area"]["carry"] == 0.0 and kept["carry"]["area"]["past_half"] == 0.0
    assert 0.5 < halfway["carry"]["area"]["carry"] < 0.6  # (100*50 + 100*60) / (100^2 + 100^2)
    assert halfway["carry"]["area"]["past_half"] == 0.5  # 60 of 100 is past half, 50 of 100 is not
    assert halfway["carry"]["cx"]["far"] == 0  # the centres never moved
    assert took["distance"]["objects"]["share_of_pixels"] == 0.25
    assert took["distance"]["objects"]["ratio"] == 1.0 and took["distance"]["rest"]["ratio"] == 0.0


def test_a_target_fused_at_no_step_keeps_its_base():
    carry = _script()
    torch.set_num_threads(1)
    model = toy_model.load_toy()
    sampling = SamplingConfig(num_steps=3, guidance_scale=5.0, eta=1.0, batch_size=4)
    caption = tw.train_captions()[0]
    unfused = FusionConfig(**{**tw.TOY_FUSION, "skip_first_steps": 3})
    records = carry.pair_records(model, caption, [1, 2, 3, 4], sampling, unfused)
    assert len(records) == 2  # 4 samples: the top one is the reference twice, the bottom two the bases
    for r in records:
        assert r["target"] == r["base"]
        assert r["objects"]["target_base"] == 0 and r["rest"]["target_base"] == 0
        assert r["objects"]["pixels"] + r["rest"]["pixels"] == tw.IMAGE_SIZE**2
    # the preset leaves the first 3 steps of 10 unfused; of these 3 steps, fuse the last 2
    fused = carry.pair_records(model, caption, [1, 2, 3, 4], sampling,
                               FusionConfig(**{**tw.TOY_FUSION, "skip_first_steps": 1}))
    assert any(np.isfinite(r["objects"]["target_base"]) and r["objects"]["target_base"] > 0 for r in fused)


def test_locality_reads_each_blocks_self_attention_and_gives_the_layers_back():
    carry = _script()
    torch.set_num_threads(1)
    model = toy_model.load_toy()
    before = [b.attn1.processor for b in model.unet.transformer_blocks]
    sampling = SamplingConfig(num_steps=2, guidance_scale=5.0, eta=1.0, batch_size=2)
    rows = carry.attention_locality(model, [tw.train_captions()[0]] * 2, [1, 2], sampling)
    assert len(rows) == len(before)
    for r in rows:  # a distribution over 64 cells: its own cell within its 3x3, entropy within ln 64
        assert 0 < r["own"] < r["neighbourhood"] < 1 and 0 < r["entropy"] < np.log(64)
    assert max(r["neighbourhood"] for r in rows) > 9 / 64  # trained maps are more local than uniform
    assert [b.attn1.processor for b in model.unet.transformer_blocks] == before
    assert all("get_attention_scores" not in vars(b.attn1) for b in model.unet.transformer_blocks)
