import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from dfusion_core import attention, blocks, pipeline
from dfusion_core.attention import FusionAttnProcessor, FusionController
from dfusion_core.config import FusionConfig
from dfusion_core.errors import ConfigError
from dfusion_core.items import map_items
from tests.core.tolerance import assert_close as _assert_close


def _unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 4, 32, 32, generator=g)
    e = torch.randn(4, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([951, 501, 51, 1]), encoder_hidden_states=e).sample


def test_idle_processors_match_stock_diffusers(tiny):
    unet = tiny.unet
    unet.set_attn_processor(AttnProcessor2_0())
    stock = _unet_out(unet)
    unet.set_attn_processor(AttnProcessor())
    classic = _unet_out(unet)
    attention.install(unet, None)
    ours = _unet_out(unet)
    ctl = FusionController(1, frozenset({2, 3, 4}), frozenset({5}), 8, (32, 32), [[[1]]], [[0.1]])
    attention.install(unet, ctl)  # a controller with no roles in the call changes nothing
    with_ctl = _unet_out(unet)
    attention.uninstall(unet)
    _assert_close(ours, stock)
    _assert_close(with_ctl, stock)
    _assert_close(ours, classic)  # bmm + softmax vs fused SDPA: another summation order


def _hand_attention(attn, h, k, v):
    q = attn.to_q(h)
    heads, d = attn.heads, q.shape[-1] // attn.heads

    def split(t):
        return t.view(t.shape[0], -1, heads, d).transpose(1, 2)

    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d**0.5, dim=-1)
    out = (w @ split(v)).transpose(1, 2).reshape(h.shape[0], -1, heads * d)
    return attn.to_out[0](out)


@pytest.mark.parametrize("mask_cells", [[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
def test_hand_built_fusion(mask_cells):
    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    h_ref, h_tgt = torch.randn(2, 4, 8), torch.randn(2, 4, 8)  # [uncond, cond] x 4 tokens (2x2)
    mask = torch.tensor(mask_cells, dtype=torch.float32)
    ctl = FusionController(1, frozenset({0}), frozenset({0}), 2, (2, 2), [[[1]]], [[0.5]])
    proc = FusionAttnProcessor(ctl, "blk.attn1", block=0)
    with torch.no_grad():
        # the reference's call at step 0 keeps its K/V; a fake cross-attention record gives its mask
        ctl.begin_call(0, None)
        proc(attn, h_ref)
        ctl._acc, ctl._acc_layers = mask.view(1, 4, 1), 1
        ctl.end_call()
        ctl.begin_call(None, 0)
        out = proc(attn, h_tgt)
        m = mask.view(1, 4, 1)
        k = attn.to_k(h_ref) * m + attn.to_k(h_tgt) * (1 - m)
        v = attn.to_v(h_ref) * m + attn.to_v(h_tgt) * (1 - m)
        expected = _hand_attention(attn, h_tgt, k, v)
    assert torch.allclose(out, expected, atol=1e-6)
    if not any(mask_cells):
        assert torch.allclose(out, _hand_attention(attn, h_tgt, attn.to_k(h_tgt), attn.to_v(h_tgt)), atol=1e-6)


def test_mask_is_thresholded_cross_attention_of_item_tokens():
    torch.manual_seed(1)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    h = torch.randn(2, 4, 8)  # reference rows [uncond, cond], 2x2 tokens
    text = torch.randn(2, 5, 6)
    ctl = FusionController(1, frozenset(), frozenset(), 2, (2, 2), [[[1, 2], [4]]], [[0.4, 0.2]])
    proc = FusionAttnProcessor(ctl, "blk.attn2", block=None)
    with torch.no_grad():
        ctl.begin_call(0, None)
        proc(attn, h, encoder_hidden_states=text)
        ctl.end_call()
        q = attn.to_q(h[1:]).view(1, 4, 2, 4).transpose(1, 2)
        k = attn.to_k(text[1:]).view(1, 5, 2, 4).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1).mean(1)[0]  # [4 cells, 5 tokens]
    expected = torch.stack([probs[:, [1, 2]].sum(-1) >= 0.4, probs[:, 4] >= 0.2], -1).float()
    assert torch.equal(ctl.masks[0][0], expected)


def test_fusion_with_no_fused_steps_is_plain_sampling(tiny, fast_sampling):
    prompt = "a cat eating a sandwich"
    # batch_size 1: every plain UNet call is [uncond, cond] of one sample, as a sequential fusion call is
    one_by_one = fast_sampling.model_copy(update={"batch_size": 1})
    ref, base = pipeline.sample(tiny, [prompt] * 2, one_by_one, seeds=[1, 2], decode=False)
    items = map_items(tiny.tokenizer, prompt, ["cat", "sandwich"], [0.03, 0.005])
    off = FusionConfig(skip_first_steps=fast_sampling.num_steps)
    same_shape = pipeline.fuse_pairs(tiny, [ref], [base], [items], off, decode=False, sequential=True)[0].target
    assert torch.equal(same_shape.latents, base.latents)  # same calls, same shapes: bit for bit
    # the batched path runs reference and target in one call (other shapes): equal up to rounding
    target = pipeline.fuse_pairs(tiny, [ref], [base], [items], off, decode=False)[0].target
    _assert_close(target.latents, base.latents)
    fused = pipeline.fuse_pairs(tiny, [ref], [base], [items], FusionConfig(skip_first_steps=1), decode=False)[0]
    assert (fused.target.latents[-1] - base.latents[-1]).abs().max() > 1e-3
    assert torch.equal(fused.target.latents[0], base.latents[0])  # same x_T as the base


def test_batched_and_sequential_fusion_agree(tiny, fast_sampling):
    prompts = ["a cat eating a sandwich", "a dog driving a car"]
    refs = pipeline.sample(tiny, prompts, fast_sampling, seeds=[1, 2], decode=False)
    bases = pipeline.sample(tiny, prompts, fast_sampling, seeds=[3, 4], decode=False)
    items = [map_items(tiny.tokenizer, p, [p.split()[1], p.split()[-1]], [0.03, 0.01]) for p in prompts]
    cfg = FusionConfig(skip_first_steps=1)
    one = pipeline.fuse_pairs(tiny, refs, bases, items, cfg, decode=False)
    two = pipeline.fuse_pairs(tiny, refs, bases, items, cfg, decode=False, sequential=True)
    classic = pipeline.fuse_pairs(tiny, refs, bases, items, cfg, decode=False, sequential=True,
                                  classic_attention=True)
    for a, b, c in zip(one, two, classic, strict=True):
        _assert_close(a.target.latents, b.target.latents)
        _assert_close(a.target.latents, c.target.latents)
        assert torch.equal(a.masks, b.masks)


def test_bad_fusion_settings(tiny, fast_sampling):
    ref, base = pipeline.sample(tiny, ["a cat"] * 2, fast_sampling, seeds=[1, 2], decode=False)
    items = map_items(tiny.tokenizer, "a cat", ["cat"], [0.1])
    with pytest.raises(ConfigError, match="fusion.blocks"):
        pipeline.fuse_pairs(tiny, [ref], [base], [items], FusionConfig(blocks=(2, 9)), decode=False)
    with pytest.raises(ConfigError, match="mask_resolution"):
        pipeline.fuse_pairs(tiny, [ref], [base], [items], FusionConfig(mask_resolution=5), decode=False)


def test_blocks_are_counted_down_mid_up(tiny):
    assert blocks.attention_blocks(tiny.unet) == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.1",
                                                     "up_blocks.2"]
    assert blocks.default_fused_blocks(tiny.unet) == (2, 4)


@pytest.mark.parametrize(
    ("mode", "level", "expected"),
    [
        # item 0's map spans 0.010..0.030, item 1's is flat (it locates nothing)
        ("absolute", 0.5, [[1, 0], [1, 0], [0, 0], [0, 0]]),  # thresholds 0.02 and 0.05
        ("minmax", 0.5, [[1, 0], [1, 0], [0, 0], [0, 0]]),  # (p - 0.01) / 0.02 >= 0.5
        ("minmax", 0.0, [[1, 0], [1, 0], [1, 0], [1, 0]]),  # level 0: the whole map, but a flat map stays empty
        ("quantile", 0.75, [[1, 1], [0, 1], [0, 1], [0, 1]]),  # the top quarter; a flat map's ties all stay
    ],
)
def test_mask_modes_cut_each_items_own_map(mode, level, expected):
    ctl = FusionController(1, frozenset({0}), frozenset({0}), 2, (2, 2), [[[1], [2]]], [[0.02, 0.05]],
                           mask_mode=mode, mask_level=level)
    probs = torch.tensor([[[0.030, 0.013], [0.020, 0.013], [0.015, 0.013], [0.010, 0.013]]])  # [n=1, L=4, items=2]
    assert ctl.binarise(probs).int().tolist() == [expected]


def test_relative_masks_through_fusion(tiny, fast_sampling):
    ref, base = pipeline.sample(tiny, ["a red and woolen dog"] * 2, fast_sampling, seeds=[3, 4], decode=False)
    items = map_items(tiny.tokenizer, "a red and woolen dog", ["woolen", "dog"], [0.5, 0.5])
    (pair,) = pipeline.fuse_pairs(tiny, [ref], [base], [items], FusionConfig(mask_mode="quantile", mask_level=0.5),
                                  decode=False)
    cover = pair.masks.float().mean(dim=1)  # [T, items]: share of the 8x8 cells on, per step and item
    # the top half of each item's own map, whatever the absolute probabilities (0.5 would give nothing)
    assert ((cover >= 0.5) & (cover <= 0.75)).all(), cover


def test_cached_processor_signatures_are_the_signatures(tiny):
    """diffusers' Attention.forward inspects its processor's __call__ on every call; the models
    keep that signature on the function (cache_call_signature). It must be the very signature
    inspect computes, or Attention would drop or warn about the wrong keyword arguments."""
    import inspect

    from diffusers.models.attention_processor import AttnProcessor2_0

    for kind in (AttnProcessor2_0, FusionAttnProcessor):
        cached = inspect.signature(kind.__call__)
        assert kind.__call__.__signature__ is cached  # set when a model is assembled / at import
        del kind.__call__.__signature__
        try:
            assert inspect.signature(kind.__call__) == cached
        finally:
            attention.cache_call_signature(kind)
    procs = {type(m.processor) for m in tiny.unet.modules() if isinstance(m, Attention)}
    assert procs and all(getattr(p.__call__, "__signature__", None) is not None for p in procs)
