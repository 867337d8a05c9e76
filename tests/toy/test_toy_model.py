"""The shipped toy model: loads as the `toy` preset, draws scenes the exact scorer recognises,
and its cross-attention masks land on the named objects."""

from __future__ import annotations

import torch

from dfusion_core import pipeline
from dfusion_core import toyworld as tw
from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.items import map_items
from dfusion_core.models import load_model

CAPTIONS = tw.heldout_captions()[:6]
THRESHOLD = 0.02  # cross-attention probability of an item token (the toy model spreads ~0.01-0.03)
MASK_RESOLUTION = 8  # the default latent/4 = 4 is too coarse: its masks miss the objects


def test_shipped_weights_fit_the_budget():
    files = list(tw.toy_dir().glob("*"))
    assert {"unet.safetensors", "text_encoder.safetensors"} <= {f.name for f in files}
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20


def test_trained_model_beats_untrained_on_heldout_captions():
    torch.set_num_threads(1)
    config = SamplingConfig(num_steps=10, guidance_scale=5.0, eta=1.0, batch_size=12)
    prompts = [c for c in CAPTIONS for _ in range(2)]
    seeds = list(range(len(prompts)))
    scorer = tw.ToyScorer()
    trained = load_model("toy")
    assert trained.name == "toy" and trained.latent_channels == 12 and trained.vae_scale == 2
    untrained = tw.build_toy()

    def mean_score(model) -> float:
        images = torch.stack([t.image for t in pipeline.sample(model, prompts, config, seeds=seeds)])
        assert images.shape == (len(prompts), 32, 32, 3)
        return float(scorer.score(images, prompts).mean())

    good, bad = mean_score(trained), mean_score(untrained)
    assert good > 0.4 and good > bad + 0.2, (good, bad)


def test_fusion_masks_land_on_the_named_objects():
    model = load_model("toy")
    config = SamplingConfig(num_steps=10, guidance_scale=5.0, eta=1.0, batch_size=4)
    prompts = CAPTIONS[:4]
    trajs = pipeline.sample(model, prompts, config, seeds=[11, 12, 13, 14])
    items = [map_items(model.tokenizer, p, tw.parse_caption(p).items, [THRESHOLD] * 2) for p in prompts]
    bases = pipeline.sample(model, prompts, config, seeds=[21, 22, 23, 24])
    fused = pipeline.fuse_pairs(model, trajs, bases, items, FusionConfig(mask_resolution=MASK_RESOLUTION))
    hits, total = 0, 0
    for traj, pair, prompt in zip(trajs, fused, prompts, strict=True):
        image = traj.image.numpy()
        regions = tw.segment(image)
        c = tw.parse_caption(prompt)
        # last step's item masks [R*R, items] on the RxR grid, against the object's pixels pooled to it
        r = pair.mask_resolution
        masks = pair.masks[-1].float().reshape(r, r, 2)
        for k, colour in enumerate((c.colour_a, c.colour_b)):
            if colour not in regions:
                continue
            obj = torch.from_numpy((((image.astype(float)[..., None, :] - tw._PALETTE) ** 2).sum(-1).argmin(-1)
                                    == 1 + list(tw.COLOURS).index(colour)).astype("float32"))
            obj_r = torch.nn.functional.avg_pool2d(obj[None, None], 32 // r)[0, 0]
            inside = (masks[..., k] * obj_r).sum() / masks[..., k].sum().clamp(min=1)
            outside = ((1 - masks[..., k]) * obj_r).sum() / (1 - masks[..., k]).sum().clamp(min=1)
            hits += int(inside > outside)
            total += 1
    assert total >= 4 and hits / total >= 0.6, (hits, total)
