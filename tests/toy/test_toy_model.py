"""The shipped toy model: loads as the `toy` preset, draws scenes the exact scorer recognises,
and fusion with the toy preset moves a base toward its reference while keeping it near the base."""

from __future__ import annotations

import pytest
import torch

from dfusion_core import pipeline
from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.items import map_items
from dfusion_core.registry import load_model
from dfusion_core.toy import model as toy_model
from dfusion_core.toy import scorer as toy_scorer
from dfusion_core.toy import world as tw

CAPTIONS = tw.heldout_captions()[:6]


def test_shipped_weights_fit_the_budget():
    files = list(toy_model.toy_dir().glob("*"))
    assert {"unet.safetensors", "text_encoder.safetensors"} <= {f.name for f in files}
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20


def test_trained_model_beats_untrained_on_heldout_captions():
    torch.set_num_threads(1)
    config = SamplingConfig(num_steps=10, guidance_scale=5.0, eta=1.0, batch_size=12)
    prompts = [c for c in CAPTIONS for _ in range(2)]
    seeds = list(range(len(prompts)))
    scorer = toy_scorer.ToyScorer()
    trained = load_model("toy")
    assert trained.name == "toy" and trained.latent_channels == 12 and trained.vae_scale == 2
    untrained = toy_model.build_toy()

    def mean_score(model) -> float:
        images = torch.stack([t.image for t in pipeline.sample(model, prompts, config, seeds=seeds)])
        assert images.shape == (len(prompts), 32, 32, 3)
        return float(scorer.score(images, prompts).mean())

    good, bad = mean_score(trained), mean_score(untrained)
    # fixed weights and seeds: measured 0.32 against 0.05 for the shipped DiT (2026-12-06); 0.2 is
    # four mis-scored samples of twelve away from that margin, more than float order across machines moves
    assert good > bad + 0.2, (good, bad)


def _toy_preset_pairs():
    """Four held-out captions: references (seeds 11..14), bases (21..24) and their fusion under the
    toy preset's settings, 10 DDIM steps."""
    model = load_model("toy")
    config = SamplingConfig(num_steps=10, guidance_scale=5.0, eta=1.0, batch_size=4)
    prompts = CAPTIONS[:4]
    refs = pipeline.sample(model, prompts, config, seeds=[11, 12, 13, 14])
    bases = pipeline.sample(model, prompts, config, seeds=[21, 22, 23, 24])
    items = [map_items(model.tokenizer, p, tw.parse_caption(p).items, [0.5] * 2) for p in prompts]
    return prompts, refs, bases, pipeline.fuse_pairs(model, refs, bases, items, FusionConfig(**tw.TOY_FUSION))


def test_fusion_moves_the_base_toward_the_reference_and_keeps_it_near():
    """The toy preset's fusion acts on the DiT's images (the old toy UNet's targets moved 0.03 from
    their bases): each target differs from its base, and stays nearer to it than the reference is."""
    prompts, refs, bases, fused = _toy_preset_pairs()

    def dist(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).abs().mean() / 255)

    moved = [dist(f.target.image, b.image) for f, b in zip(fused, bases, strict=True)]
    apart = [dist(r.image, b.image) for r, b in zip(refs, bases, strict=True)]
    # measured: targets move ~0.03-0.1 from their bases, references are ~0.15-0.25 away; a target
    # that moved under 0.005 (a pixel value of ~1 on average) is one fusion did not reach
    assert min(moved) > 0.005, moved
    assert sum(moved) < sum(apart), (moved, apart)


def test_fusion_masks_land_on_the_named_objects():
    """Over every fused step, not only the last: the toy preset's item masks (each object's colour and
    pattern words) overlap the caption's objects in the reference image better than covering everything,
    or than the same mask mirrored, would."""
    prompts, refs, _, fused = _toy_preset_pairs()
    fusion, steps = FusionConfig(**tw.TOY_FUSION), 10
    ious, full, mirrored = [], [], []
    for ref, pair, prompt in zip(refs, fused, prompts, strict=True):
        truth = toy_scorer.object_masks(ref.image.numpy(), prompt).any(0)
        full.append(toy_scorer.mask_iou(torch.ones(pair.mask_resolution**2, 1), pair.mask_resolution, truth))
        for step in fusion.fused_steps(steps):
            m = pair.masks[step]
            ious.append(toy_scorer.mask_iou(m, pair.mask_resolution, truth))
            flipped = m.reshape(pair.mask_resolution, pair.mask_resolution, -1).flip(0, 1).reshape(m.shape)
            mirrored.append(toy_scorer.mask_iou(flipped, pair.mask_resolution, truth))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    # fixed weights and seeds make these numbers exact (see the measured values in the message: 0.553
    # against 0.509 and 0.511 for the pattern world's weights, whose square objects a full mask
    # covers better than the shape world's); a cell more or less in one of the 4 pairs moves the
    # mean by about 0.012, so 0.03 is more than two cells' worth
    assert mean(ious) > mean(full) + 0.03 and mean(ious) > mean(mirrored) + 0.03, (
        mean(ious), mean(full), mean(mirrored))


def _caption_ids(tokenizer, captions):
    return tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids


def test_word_context_starts_as_the_identity_and_then_reads_the_whole_caption():
    """A new WordContext layer changes nothing (weights trained without it load unchanged); once its
    output projections are trained, a word's row carries the caption's other words, bidirectionally,
    and never what stands after the end token."""
    torch.set_num_threads(1)
    model = toy_model.build_toy(seed=5)
    text, tokenizer = model.text_encoder, model.tokenizer
    ids = _caption_ids(tokenizer, ["a red striped square above a blue dotted square", "a red striped square left of a blue dotted square"])
    plain = toy_model.ToyTextEncoder(text.config)
    plain.load_state_dict(text.state_dict())
    plain.context = torch.nn.ModuleList()  # the same encoder with no context layer at all
    with torch.no_grad():
        assert torch.equal(text(ids)[0], plain(ids)[0])
        for layer in text.context:  # as if trained: output projections no longer zero
            torch.nn.init.normal_(layer.out.weight, std=0.2)
            torch.nn.init.normal_(layer.fc2.weight, std=0.2)
        rows = text(ids)[0]
        # "red" (row 2) comes before the relation word (row 5): it differs only through context
        assert (rows[0, 2] - rows[1, 2]).abs().max() > 1e-3
        lengths = [len(tokenizer(c).input_ids) for c in ("a red striped square above a blue dotted square",
                                                         "a red striped square left of a blue dotted square")]
        for row, n in enumerate(lengths):
            assert not rows[row, n:].any()
        n = lengths[0]
        longer = ids.clone()
        longer[0, n:] = ids[0, 1]  # words in the padding rows, past the first end token
        assert torch.equal(text(longer)[0][0, :n], rows[0, :n])


def test_toy_weights_without_word_context_load_and_foreign_keys_are_refused(tmp_path):
    unet, text = toy_model.build_toy_modules(seed=1)
    state = {k: v for k, v in text.state_dict().items() if not k.startswith("context.")}
    bare = toy_model.ToyTextEncoder(text.config)
    bare.context = torch.nn.ModuleList()
    bare.load_state_dict(state)
    toy_model.save_toy_weights(unet, bare, tmp_path / "old")
    _, loaded = toy_model.load_toy_modules(tmp_path / "old")
    assert all(not p.any() for layer in loaded.context for p in (layer.out.weight, layer.fc2.weight))
    toy_model.save_toy_weights(unet, text, tmp_path / "new")
    from safetensors.torch import load_file, save_file

    extra = load_file(str(tmp_path / "new" / "unet.safetensors"))
    extra["stray.weight"] = torch.zeros(1, dtype=torch.float16)
    save_file(extra, str(tmp_path / "new" / "unet.safetensors"))
    with pytest.raises(ConfigError, match="stray.weight"):
        toy_model.load_toy_modules(tmp_path / "new")
