"""scripts/toy_fusion_probe.py: exact item masks for fusion and own queries, laid over the modules only
while their probe is on."""

from __future__ import annotations

from contextlib import nullcontext
from unittest import mock

import torch

from dfusion_core import attention, pipeline
from dfusion_core.config import FusionConfig, SamplingConfig
from dfusion_core.items import map_items
from dfusion_core.toy import model as toy_model
from dfusion_core.toy import world as tw
from tests.toy.scriptload import load_script


def _script():
    return load_script("scripts/toy_fusion_probe.py")


def test_oracle_masks_are_the_reference_objects_cells_at_every_step():
    probe, binarise = _script(), attention.FusionController.binarise
    torch.set_num_threads(1)
    model, caption = toy_model.load_toy(), "a red striped square above a blue dotted square"
    sampling = SamplingConfig(num_steps=3, guidance_scale=5.0, eta=1.0, batch_size=2)
    refs = pipeline.sample(model, [caption] * 2, sampling, seeds=[11, 12])
    items = map_items(model.tokenizer, caption, tw.parse_caption(caption).items, [0.02, 0.02])
    with probe.oracle_masks("any"):
        fused = pipeline.fuse_pairs(model, refs, refs[::-1], [items] * 2, FusionConfig(**tw.TOY_FUSION))
    for ref, pair in zip(refs, fused, strict=True):
        cells = torch.from_numpy(probe.oracle_cells(ref.image.numpy(), caption, "any")).float()
        assert cells.any() and all(torch.equal(m, cells) for m in pair.masks)
    assert attention.FusionController.binarise is binarise  # restored


def test_own_queries_changes_only_the_queries_the_mask_leaves_out():
    probe = _script()
    torch.set_num_threads(1)
    model, caption = toy_model.load_toy(), "a red striped square above a blue dotted square"
    sampling = SamplingConfig(num_steps=3, guidance_scale=5.0, eta=1.0, batch_size=2)
    refs = pipeline.sample(model, [caption] * 2, sampling, seeds=[11, 12])
    items = map_items(model.tokenizer, caption, tw.parse_caption(caption).items, [0.02, 0.02])
    fusion = FusionConfig(**{**tw.TOY_FUSION, "skip_first_steps": 0})

    def targets(everywhere: bool, own: bool) -> list[torch.Tensor]:
        full = mock.patch.object(attention.FusionController, "binarise", lambda self, avg: torch.ones_like(avg, dtype=torch.bool))
        with full if everywhere else nullcontext(), probe.own_queries() if own else nullcontext():
            return [f.target.image for f in pipeline.fuse_pairs(model, refs, refs[::-1], [items] * 2, fusion)]

    # a mask over every cell leaves no query out: the same targets with or without the probe
    assert all(torch.equal(a, b) for a, b in zip(targets(True, False), targets(True, True), strict=True))
    # the preset's masks leave some out, and their queries now read the target's own keys and values
    assert not all(torch.equal(a, b) for a, b in zip(targets(False, False), targets(False, True), strict=True))
    assert attention.F.scaled_dot_product_attention is torch.nn.functional.scaled_dot_product_attention  # restored
