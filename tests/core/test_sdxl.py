"""SDXL: the tiny-sdxl preset against stock diffusers' SDXL pipeline, determinism, fusion in SDXL's
block layout, and a LoRA that `StableDiffusionXLPipeline.load_lora_weights` accepts."""

import pytest
import torch
from diffusers import DDIMScheduler

from dfusion_core import attention, blocks, pipeline
from dfusion_core.attention import FusionAttnProcessor, FusionController
from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.items import map_items
from dfusion_core.lora import WEIGHTS_NAME, add_lora, lora_bytes
from dfusion_core.registry import load_model
from dfusion_core.sdxl import TINY_SDXL, build_tiny_sdxl, to_sdxl_pipeline
from tests.core.tolerance import assert_close as _assert_close

PROMPT = "a cat eating a sandwich"


@pytest.fixture(scope="module")
def xl():
    return build_tiny_sdxl()


@pytest.fixture
def one_by_one():
    return SamplingConfig(num_steps=3, guidance_scale=5.0, eta=1.0, batch_size=1)


def test_tiny_sdxl_has_sdxls_layout(xl):
    assert load_model(TINY_SDXL).is_sdxl and xl.is_sdxl
    # no attention at the top resolution; mid and the two lower decoder levels fuse by default
    assert blocks.attention_blocks(xl.unet) == ["down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0",
                                                  "up_blocks.1"]
    assert blocks.default_fused_blocks(xl.unet) == (2, 4)
    cond = xl.encode([PROMPT, "a dog"])
    assert cond.hidden.shape == (2, 77, 64) and cond.pooled.shape == (2, 32)
    assert cond.time_ids.tolist() == [[64, 64, 0, 0, 64, 64]] * 2  # 32 latents x VAE factor 2
    uncond = xl.encode_uncond(2)  # force_zeros_for_empty_prompt, as the stock pipeline
    assert not uncond.hidden.any() and not uncond.pooled.any()


def test_sampling_matches_stock_sdxl_pipeline(xl, one_by_one):
    """Our DDIM chain (fusion processors installed, idle) gives the stock pipeline's latents: same
    encoders, zero negative branch, time ids, noise draws (x_T, then one z per step) and steps."""
    ours = pipeline.sample(xl, [PROMPT], one_by_one, seeds=[7], decode=False)[0]
    pipe = to_sdxl_pipeline(xl)  # the same modules, stock attention processors
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(PROMPT, num_inference_steps=one_by_one.num_steps, guidance_scale=5.0, eta=1.0, output_type="latent",
                 generator=torch.Generator().manual_seed(7)).images
    _assert_close(ours.latents[-1], stock[0])
    attention.install(xl.unet, None)
    try:
        idle = pipeline.sample(xl, [PROMPT], one_by_one, seeds=[7], decode=False)[0]
    finally:
        attention.uninstall(xl.unet)
    _assert_close(idle.latents, ours.latents)


def test_sampling_is_deterministic_and_log_probs_recompute(xl):
    cfg = SamplingConfig(num_steps=3, guidance_scale=5.0, eta=1.0, batch_size=2)
    a = pipeline.sample(xl, [PROMPT, "a red cube"], cfg, seeds=[1, 2], decode=False)
    b = pipeline.sample(xl, [PROMPT, "a red cube"], cfg, seeds=[1, 2], decode=False)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.latents, y.latents) and torch.equal(x.log_probs, y.log_probs)
    assert not torch.equal(a[0].latents[-1], a[1].latents[-1])
    # same batch shape as sampling: the recomputed log-probs are the sampled ones, bit for bit
    assert torch.equal(pipeline.log_probs(xl, a), torch.stack([t.log_probs for t in a]))


def test_fusion_off_is_plain_sampling_and_on_changes_the_target(xl, one_by_one):
    ref, base = pipeline.sample(xl, [PROMPT] * 2, one_by_one, seeds=[1, 2], decode=False)
    items = map_items(xl.tokenizer, PROMPT, ["cat", "sandwich"], [0.03, 0.005])
    off = FusionConfig(skip_first_steps=one_by_one.num_steps)
    sequential = pipeline.fuse_pairs(xl, [ref], [base], [items], off, decode=False, sequential=True)[0]
    assert torch.equal(sequential.target.latents, base.latents)  # same calls, same shapes: bit for bit
    _assert_close(pipeline.fuse_pairs(xl, [ref], [base], [items], off, decode=False)[0].target.latents, base.latents)
    on = FusionConfig(skip_first_steps=1, mask_mode="quantile", mask_level=0.5)
    fused = pipeline.fuse_pairs(xl, [ref], [base], [items], on, decode=False)[0]
    assert fused.masks.shape == (3, 8 * 8, 2) and fused.mask_resolution == 8  # latent side / 4
    # fusion moves the random tiny model's latents ~2e-3 of their scale: 200x the rounding bound
    assert (fused.target.latents[-1] - base.latents[-1]).abs().max() > 1e-3 * base.latents[-1].abs().max()
    assert torch.equal(fused.target.latents[0], base.latents[0])


@pytest.mark.parametrize(("layer", "side"), [("up_blocks.0", 8), ("up_blocks.1", 16)])
def test_hand_built_fusion_in_an_sdxl_block(xl, layer, side):
    """A real SDXL self-attention layer: the target's K/V take the reference's inside a hand-made
    mask (left half of the 8x8 mask grid), nearest-resized to the layer's own grid."""
    name = f"{layer}.attentions.0.transformer_blocks.0.attn1.processor"
    attn = dict(xl.unet.named_modules())[name.removesuffix(".processor")]
    block = blocks.block_ordinal(xl.unet, name)
    assert block == {"up_blocks.0": 3, "up_blocks.1": 4}[layer]
    grid = torch.zeros(8, 8)
    grid[:, :4] = 1  # the left half
    ctl = FusionController(1, frozenset({block}), frozenset({0}), 8, (32, 32), [[[1]]], [[0.5]])
    proc = FusionAttnProcessor(ctl, name, block)
    g = torch.Generator().manual_seed(0)
    h_ref, h_tgt = (torch.randn(2, side * side, attn.query_dim, generator=g) for _ in range(2))
    with torch.no_grad():
        ctl.begin_call(0, None)
        proc(attn, h_ref)
        ctl._acc, ctl._acc_layers = grid.view(1, 64, 1), 1  # stands in for the cross-attention record
        ctl.end_call()
        ctl.begin_call(None, 0)
        out = proc(attn, h_tgt)
        m = torch.nn.functional.interpolate(grid[None, None], size=(side, side), mode="nearest").view(1, -1, 1)
        assert m.mean() == 0.5
        k = attn.to_k(h_ref) * m + attn.to_k(h_tgt) * (1 - m)
        v = attn.to_v(h_ref) * m + attn.to_v(h_tgt) * (1 - m)
        heads, d = attn.heads, k.shape[-1] // attn.heads

        def split(t):
            return t.view(2, -1, heads, d).transpose(1, 2)

        w = torch.softmax(split(attn.to_q(h_tgt)) @ split(k).transpose(-1, -2) * attn.scale, dim=-1)
        expected = attn.to_out[0]((w @ split(v)).transpose(1, 2).reshape(2, -1, heads * d))
    _assert_close(out, expected)
    assert (out - proc(attn, h_tgt)).abs().max() == 0  # deterministic
    ctl.begin_call(None, None)  # no role in the call: the processor is plain attention
    plain = proc(attn, h_tgt)
    assert (out - plain).abs().max() > 1e-3 * plain.abs().max()


def test_lora_checkpoint_loads_into_stock_sdxl_pipeline(tmp_path):
    trained = build_tiny_sdxl()
    add_lora(trained.unet, 4, seed=1)
    with torch.no_grad():
        for name, p in trained.unet.named_parameters():
            if "lora_B" in name:  # zero at init, which would change nothing
                p.fill_(0.05)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / WEIGHTS_NAME).write_bytes(lora_bytes(trained.unet))

    def image(pipe) -> torch.Tensor:
        return pipe(PROMPT, num_inference_steps=2, guidance_scale=5.0, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    pipe = to_sdxl_pipeline(build_tiny_sdxl())
    pipe.set_progress_bar_config(disable=True)
    before = image(pipe)
    pipe.load_lora_weights(str(tmp_path / "ckpt"))
    after = image(pipe)
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("writer", ["pipeline", "save_model"])
def test_sdxl_folder_loads_with_its_second_text_encoder(xl, tmp_path, writer):
    from dfusion_core.models import load_pretrained, save_model

    if writer == "pipeline":  # model_index.json names text_encoder_2 and force_zeros_for_empty_prompt
        to_sdxl_pipeline(xl).save_pretrained(tmp_path)
    else:  # components only: the text_encoder_2/ folder tells
        save_model(xl, tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.is_sdxl and loaded.zero_uncond
    a, b = xl.encode([PROMPT]), loaded.encode([PROMPT])
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.pooled, b.pooled) and torch.equal(a.time_ids, b.time_ids)


def test_sdxl_vae_stays_fp32_in_half_precision():
    """SDXL's VAE overflows in fp16 (`force_upcast`): kept fp32 while the rest runs in half precision."""
    half = build_tiny_sdxl(dtype=torch.bfloat16)  # bf16: the half type CPUs run
    assert half.vae.dtype == torch.float32 and half.unet.dtype == torch.bfloat16
    cfg = SamplingConfig(num_steps=2, guidance_scale=5.0, eta=1.0, batch_size=1)
    [traj] = pipeline.sample(half, [PROMPT], cfg, seeds=[3])
    assert traj.image.dtype == torch.uint8 and torch.isfinite(traj.log_probs).all()


def test_sdxl_hub_id_loads_offline_from_the_cache(xl, tmp_path):
    """`org/tiny-sdxl` from a Hub-layout cache (tests/hubcache.py) with the Hub unreachable."""
    from dfusion_core.hub import HubOptions
    from tests.hubcache import REVISION, build_hub_cache

    cache = build_hub_cache(tmp_path, "org/tiny-sdxl", model=xl)
    loaded = load_model("org/tiny-sdxl", hub=HubOptions(cache_dir=cache, offline=True), revision=REVISION)
    assert loaded.is_sdxl and loaded.zero_uncond and loaded.name == "org/tiny-sdxl"
    assert torch.equal(loaded.encode([PROMPT]).pooled, xl.encode([PROMPT]).pooled)


def test_an_sdxl_repo_whose_index_cannot_be_had_still_loads_as_sdxl(xl, tmp_path):
    """SDXL is told by the UNet's config, not by model_index.json: a repo whose index is not there
    (in the cache here; from a Hub that failed to answer in production) once loaded as SD 1.x, and a
    worker kept that wrong model for every later job. Its second encoder then loads as usual."""
    from dfusion_core.hub import HubOptions
    from tests.hubcache import REVISION, build_hub_cache

    cache = build_hub_cache(tmp_path, "org/tiny-sdxl", model=xl)
    (cache / "models--org--tiny-sdxl" / "snapshots" / REVISION / "model_index.json").unlink()
    loaded = load_model("org/tiny-sdxl", hub=HubOptions(cache_dir=cache, offline=True))
    assert loaded.is_sdxl and loaded.zero_uncond  # the index's flag takes SDXL's default
    assert torch.equal(loaded.encode([PROMPT]).pooled, xl.encode([PROMPT]).pooled)
