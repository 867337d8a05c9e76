"""scripts/train_toy.py's attention supervision: the scenes' object masks, the item-map loss, and a
run that trains only the cross-attention queries and keys."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from dfusion_core.toy import model as toy_model
from dfusion_core.toy import world as tw
from tests.toy.scriptload import load_script


def _script():
    return load_script("scripts/train_toy.py")


def test_scene_batch_draws_make_batch_s_images_and_masks_each_object():
    tt = _script()
    caps = tw.train_captions()[:6]
    images, masks = tt.scene_batch(caps, np.random.default_rng(7))
    assert np.array_equal(images, tw.make_batch(caps, np.random.default_rng(7)))  # the same data stream
    for image, (a, b), cap in zip(images, masks, caps, strict=True):
        c = tw.parse_caption(cap)
        for mask, colour, pattern in ((a, c.colour_a, c.pattern_a), (b, c.colour_b, c.pattern_b)):
            expect = np.where(tw.dark_pixels(pattern)[..., None], np.array(tw.DARK_COLOURS[colour], np.uint8),
                              np.array(tw.COLOURS[colour], np.uint8))
            assert (image[mask] == expect[mask]).all()
        assert (image[~(a | b)] == 0).all() and not (a & b).any()


def test_attention_loss_is_zero_on_the_objects_cells_and_grows_off_them():
    tt = _script()
    cells = torch.zeros(1, 2, 4)
    cells[0, 0, 0], cells[0, 1, 3] = 1.0, 1.0  # object A on cell 0, B on cell 3
    positions = [[[1], [2]]]  # A's words at token 1, B's at token 2
    exact = torch.full((1, 4, 3), 1e-6)
    exact[0, 0, 1], exact[0, 3, 2] = 1.0, 1.0
    swapped = torch.full((1, 4, 3), 1e-6)
    swapped[0, 3, 1], swapped[0, 0, 2] = 1.0, 1.0
    flat = torch.full((1, 4, 3), 1 / 3)
    weight = torch.ones(1)
    # 1e-6 of leak on three other cells is a KL of about 3e-6 per item
    assert tt.attention_loss(exact, cells, positions, weight) < 1e-4
    assert tt.attention_loss(flat, cells, positions, weight) > 1.0  # log 4: a flat map over 4 cells
    assert tt.attention_loss(swapped, cells, positions, weight) > tt.attention_loss(flat, cells, positions, weight)
    assert tt.attention_loss(swapped, cells, positions, torch.zeros(1)) == 0  # weight 0: no loss


def test_train_only_attn2_qk_moves_nothing_else(tmp_path):
    tt = _script()
    tt.main(["--steps", "2", "--batch", "4", "--lr", "1e-2", "--warmup", "1", "--ema", "0", "--save-every", "2",
             "--init", str(toy_model.toy_dir()), "--out", str(tmp_path), "--threads", "1",
             "--attn-supervision", "1.0", "--train-only", "attn2-qk"])
    for name in ("unet", "text_encoder"):
        before = load_file(str(toy_model.toy_dir() / f"{name}.safetensors"))
        after = load_file(str(tmp_path / f"{name}.safetensors"))
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        allowed = {k for k in before if ".attn2.to_q." in k or ".attn2.to_k." in k}
        assert moved <= allowed, sorted(moved - allowed)[:5]
        assert bool(moved) == (name == "unet")  # the text encoder has no attn2
