"""dfusion_core.compare on the tiny model: one noise per seed for both models, the item masks recorded
by a controller that fuses nothing, and images equal to plain sampling's."""

from __future__ import annotations

import pytest
import torch

from dfusion_core import pipeline
from dfusion_core.compare import compare, sample_with_item_masks
from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.items import map_items
from dfusion_core.lora import add_lora
from dfusion_core.models import build_tiny

PROMPT = "a cat eating a sandwich"
CONFIG = SamplingConfig(num_steps=3, batch_size=2)


class _MeanScorer:
    """Scores are the images' mean brightness: a hand-checkable scorer."""

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3)) / 255


def test_recording_masks_changes_no_image_and_cuts_each_item(tiny) -> None:
    items = map_items(tiny.tokenizer, PROMPT, ["cat", "sandwich"], [0.5, 0.5])
    fusion = FusionConfig(mask_mode="quantile", mask_level=0.75)
    images, masks, side = sample_with_item_masks(tiny, PROMPT, items, [4, 5, 6], CONFIG, fusion)
    plain = pipeline.sample(tiny, [PROMPT] * 3, CONFIG, seeds=[4, 5, 6])
    assert (images.int() - torch.stack([t.image for t in plain]).int()).abs().max() <= 1
    assert masks.shape == (3, 2, side, side) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.mean(dim=(2, 3)).allclose(torch.full((3, 2), 0.25), atol=0.05)  # the top quarter of the cells


def test_base_and_trained_share_the_noise_of_each_seed() -> None:
    tiny = build_tiny()  # its own: a LoRA goes on it (the session's model stays untouched)
    items = map_items(tiny.tokenizer, PROMPT, ["cat"], [0.5])
    same = compare(tiny, _MeanScorer(), PROMPT, [0, 1], CONFIG, items=items)
    assert torch.equal(same.base_images, same.trained_images)  # no adapter: the policy is its base
    assert same.base_scores.allclose(same.base_images.float().mean(dim=(1, 2, 3)) / 255)
    assert same.item_masks is not None and same.item_masks.shape[:2] == (2, 1)
    add_lora(tiny.unet, rank=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in tiny.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    trained = compare(tiny, _MeanScorer(), PROMPT, [1, 7], CONFIG)
    assert torch.equal(trained.base_images[0], same.base_images[1])  # seed 1, adapters off: the same picture
    assert not torch.equal(trained.trained_images[0], trained.base_images[0])
    assert trained.item_masks is None and trained.seeds == (1, 7)


def test_no_seeds_is_an_error(tiny) -> None:
    with pytest.raises(ConfigError, match="^seeds: "):
        compare(tiny, _MeanScorer(), PROMPT, [], CONFIG)
