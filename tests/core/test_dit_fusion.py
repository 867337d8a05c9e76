"""D-Fusion on a transformer denoiser (the toy DiT, PixArt-alpha's blocks): its blocks are counted in
order, fusion with no fused step is plain sampling, and inside the mask the target's self-attention
keys and values are the reference's, from the reference's pass at the same step."""

from __future__ import annotations

import pytest
import torch

from dfusion_core import blocks, pipeline
from dfusion_core.attention import FusionController
from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.items import map_items
from dfusion_core.toy import model as toy_model
from tests.core.tolerance import assert_close

PROMPT = "a red striped square above a blue dotted square"


@pytest.fixture(scope="module")
def dit():
    return toy_model.build_toy(seed=3)  # random weights: the mechanics do not need a trained model


@pytest.fixture(scope="module")
def sampling():
    return SamplingConfig(num_steps=4, guidance_scale=5.0, eta=1.0, batch_size=2)


def _items(model):
    return map_items(model.tokenizer, PROMPT, ["striped", "dotted"], [0.5, 0.5])


def test_blocks_are_the_transformer_blocks_in_order(dit):
    n = toy_model.TOY_DIT_CONFIG["num_layers"]
    assert blocks.is_transformer(dit.unet)
    assert blocks.attention_blocks(dit.unet) == [f"transformer_blocks.{i}" for i in range(n)]
    assert blocks.default_fused_blocks(dit.unet) == (n // 2, n - 1)
    # every layer works on the 8x8 token grid: the default mask side is that grid
    assert blocks.mask_side(dit.unet, dit.latent_size, None) == dit.latent_size // 2 == 8
    assert blocks.mask_side(dit.unet, dit.latent_size, 4) == 4


def test_no_fused_step_is_plain_sampling(dit, sampling):
    one_by_one = sampling.model_copy(update={"batch_size": 1})  # plain calls shaped as sequential fusion's
    ref, base = pipeline.sample(dit, [PROMPT] * 2, one_by_one, seeds=[1, 2], decode=False)
    off = FusionConfig(skip_first_steps=sampling.num_steps, mask_mode="quantile", mask_level=0.5)
    same = pipeline.fuse_pairs(dit, [ref], [base], [_items(dit)], off, decode=False, sequential=True)[0]
    assert torch.equal(same.target.latents, base.latents)
    batched = pipeline.fuse_pairs(dit, [ref], [base], [_items(dit)], off, decode=False)[0]
    assert_close(batched.target.latents, base.latents)
    on = FusionConfig(skip_first_steps=1, mask_mode="quantile", mask_level=0.5, blocks=(0, 7))
    fused = pipeline.fuse_pairs(dit, [ref], [base], [_items(dit)], on, decode=False)[0]
    assert torch.equal(fused.target.latents[0], base.latents[0])
    assert (fused.target.latents[-1] - base.latents[-1]).abs().max() > 1e-3


def test_masked_keys_and_values_come_from_the_reference(dit, sampling, monkeypatch):
    """Spy on every self-attention K/V blend: at a fused block and step, the target rows' K/V
    equal the reference's K/V of the same layer and step on the mask's cells, and the target's own
    elsewhere; unfused blocks pass the target's own through."""
    seen: list[dict] = []
    original = FusionController.fuse_kv

    def spy(self, name, key, value):
        entry = {"name": name, "ref_step": self.ref_step, "tgt_step": self.tgt_step, "k_in": key.clone(),
                 "v_in": value.clone(), "slices": {r: self._slices(r) for r in self.roles}}
        k_out, v_out = original(self, name, key, value)
        entry.update(k_out=k_out.clone(), v_out=v_out.clone(), masks=list(self.masks))
        seen.append(entry)
        return k_out, v_out

    monkeypatch.setattr(FusionController, "fuse_kv", spy)
    ref, base = pipeline.sample(dit, [PROMPT] * 2, sampling, seeds=[5, 6], decode=False)
    config = FusionConfig(skip_first_steps=1, mask_mode="quantile", mask_level=0.5, blocks=(2, 5))
    pipeline.fuse_pairs(dit, [ref], [base], [_items(dit)], config, decode=False)
    fused_blocks = {f"transformer_blocks.{i}.attn1.processor" for i in range(2, 6)}
    assert {e["name"] for e in seen} == fused_blocks  # only the fused blocks' self-attention blends
    checked = 0
    for e in seen:
        step = e["tgt_step"]
        if step not in config.fused_steps(sampling.num_steps):
            assert torch.equal(e["k_out"], e["k_in"]) and torch.equal(e["v_out"], e["v_in"])
            continue
        # the reference's K/V of this layer at this step: recorded in the call where it ran at `step`
        ref_call = next(r for r in seen if r["name"] == e["name"] and r["ref_step"] == step)
        mask = e["masks"][step].amax(-1)[0].bool()  # [64]: union over items, 8x8 cells = the token grid
        assert 0 < int(mask.sum()) < mask.numel()
        for half in (0, 1):  # both CFG halves
            tgt_rows, ref_rows = e["slices"]["tgt"][half], ref_call["slices"]["ref"][half]
            for out, own, lent in ((e["k_out"], e["k_in"], ref_call["k_in"]), (e["v_out"], e["v_in"], ref_call["v_in"])):
                got, mine, theirs = out[tgt_rows][0], own[tgt_rows][0], lent[ref_rows][0]  # [heads, 64, d]
                assert torch.equal(got[:, mask], theirs[:, mask])
                assert torch.equal(got[:, ~mask], mine[:, ~mask])
                assert not torch.allclose(mine[:, mask], theirs[:, mask])  # the blend changed something
        checked += 1
    assert checked == len(fused_blocks) * len(config.fused_steps(sampling.num_steps))


def test_the_denoiser_sees_only_the_caption_s_own_tokens(dit):
    """ToyTextEncoder zeroes every row after the first end-of-text token, and ToyDiT masks zero rows
    as PixArt masks T5's padding: what stands in the padding rows cannot change the output."""
    ids = dit.tokenizer([PROMPT, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = dit.text_encoder(ids)[0]
    real = [len(dit.tokenizer(PROMPT).input_ids), 2]  # BOS, words, EOS; "" is BOS, EOS
    for row, n in enumerate(real):
        assert hidden[row, :n].abs().amax(-1).min() > 0 and not hidden[row, n:].any()
    x = torch.randn(2, 12, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 20])
    noisy = hidden.clone()
    noisy[0, real[0]:] = torch.randn_like(noisy[0, real[0]:])
    with torch.no_grad():
        plain = dit.unet(x, t, encoder_hidden_states=hidden).sample
        mask = (noisy.abs().amax(-1) > 0).float()
        mask[0, real[0]:] = 0  # the same rows masked, different values in them
        masked = dit.unet(x, t, encoder_hidden_states=noisy, encoder_attention_mask=mask).sample
        unmasked = dit.unet(x, t, encoder_hidden_states=noisy).sample  # nonzero padding is attended to
    assert_close(masked, plain)
    assert (unmasked - plain).abs().max() > 1e-4
