"""The toy world's data and exact scorer (dfusion_core/toy/world.py, dfusion_core/toy/scorer.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfusion_core.errors import ConfigError
from dfusion_core.registry import available_scorers, build_scorer
from dfusion_core.toy import model as toy_model
from dfusion_core.toy import scorer as toy_scorer
from dfusion_core.toy import world as tw


def _swap_objects(text: str) -> str:
    """The caption with its objects named the other way round: only the relation becomes false."""
    c = tw.parse_caption(text)
    return tw.Caption(c.colour_b, c.pattern_b, c.relation, c.colour_a, c.pattern_a).text


def _swap_patterns(text: str) -> str:
    c = tw.parse_caption(text)
    return tw.Caption(c.colour_a, c.pattern_b, c.relation, c.colour_b, c.pattern_a).text


def test_captions_and_split():
    assert len(tw.CAPTIONS) == len(set(tw.CAPTIONS)) == 4 * 3 * 2 * 3 * 2  # colours, patterns, relations
    held, train = tw.heldout_captions(), tw.train_captions()
    assert held and train and not set(held) & set(train)
    assert sorted(held + train) == sorted(tw.CAPTIONS)
    # every colour-pattern binding and relation of the held-out split is seen in training, in other combinations
    seen = {(c.colour_a, c.pattern_a) for c in map(tw.parse_caption, train)}
    assert all((c.colour_a, c.pattern_a) in seen for c in map(tw.parse_caption, held))
    assert tw.parse_caption("a red striped square above a blue dotted square").items == ["red striped", "blue dotted"]


@pytest.mark.parametrize("bad", ["a purple striped square above a blue dotted square",
                                 "a red striped square above a red dotted square",
                                 "a red striped square near a blue dotted square",
                                 "a red striped square above a blue striped square",
                                 "a red plain square above a blue dotted square",
                                 "a red circle above a blue square", ""])
def test_parse_rejects_text_outside_the_world(bad):
    with pytest.raises(ConfigError):
        tw.parse_caption(bad)


def test_a_relation_said_the_other_way_round_is_refused_with_the_world_s_wording():
    with pytest.raises(ConfigError, match="'a blue dotted square above a red striped square'"):
        tw.parse_caption("a red striped square below a blue dotted square")
    with pytest.raises(ConfigError, match="'a blue dotted square left of a red striped square'"):
        tw.parse_caption("a red striped square right of a blue dotted square")


def test_generation_is_deterministic_and_follows_the_caption():
    caps = list(tw.CAPTIONS[::5])
    a = tw.make_batch(caps, np.random.default_rng(7))
    b = tw.make_batch(caps, np.random.default_rng(7))
    assert a.dtype == np.uint8 and a.shape == (len(caps), 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, tw.make_batch(caps, np.random.default_rng(8)))


def test_scorer_is_exact_on_ground_truth_and_penalises_wrong_captions():
    scorer = build_scorer("toy")
    assert "toy" in available_scorers() and isinstance(scorer, toy_scorer.ToyScorer)
    caps = [tw.CAPTIONS[i % len(tw.CAPTIONS)] for i in range(0, 600, 3)]
    images = torch.from_numpy(tw.make_batch(caps, np.random.default_rng(0)))
    assert torch.equal(scorer.score(images, caps), torch.ones(len(caps)))
    wrong_relation = scorer.score(images, [_swap_objects(c) for c in caps])
    assert torch.allclose(wrong_relation, torch.full((len(caps),), 0.8))  # four facts of five hold
    assert (scorer.score(images, [_swap_patterns(c) for c in caps]) == 0.6).all()  # both patterns wrong
    blank = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    assert torch.equal(scorer.score(blank, caps[:2]), torch.zeros(2))


def test_segment_reads_each_object_s_box_and_pattern():
    scene = tw.sample_scene("a red checked square left of a blue striped square", np.random.default_rng(3))
    regions = toy_scorer.segment(tw.render(scene))
    for obj in scene.objects:  # bright and dark pixels make one square blob, symmetric left to right
        r = regions[obj.colour]
        assert r.aspect == 1.0 and r.fill == 1.0 and r.pattern == obj.pattern and abs(r.cx - obj.cx) < 0.5
    wide = np.zeros((32, 32, 3), np.uint8)
    wide[10:15, 4:19] = tw.COLOURS["green"]  # 15 x 5 px
    assert toy_scorer.segment(wide)["green"].aspect == 3.0


@pytest.mark.parametrize("pattern", tw.PATTERNS)
def test_patterns_are_read_through_noise_and_a_square_without_one_is_none_of_them(pattern):
    """A sampled image is never clean: the reader must hold under pixel noise (sd 25 of 255 here), and
    a plain square with a stray dark row at its edge has none of the world's patterns."""
    rng = np.random.default_rng(5)
    other = next(p for p in tw.PATTERNS if p != pattern)
    caption = tw.parse_caption(f"a red {pattern} square above a blue {other} square")
    for _ in range(20):
        scene = tw.Scene(caption, (tw.Obj("red", pattern, int(rng.integers(7, 25)), 8, int(rng.integers(5, 8))),
                                   tw.Obj("blue", other, 16, 24, 5)))
        image = np.clip(tw.render(scene) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        assert toy_scorer.segment(image)["red"].pattern == pattern
    plain = np.zeros((32, 32, 3), np.uint8)
    plain[4:17, 4:17] = tw.COLOURS["red"]  # a 13 px square with no pattern ...
    plain[4, 4:17] = tw.DARK_COLOURS["red"]  # ... and one dark row at its edge
    assert toy_scorer.segment(plain)["red"].pattern == "plain" and "plain" not in tw.PATTERNS
    assert toy_scorer.caption_facts(plain, f"a red {pattern} square above a blue {other} square")[1] is False


def test_cell_shares_cut_masks_into_token_cells_row_by_row():
    mask = np.zeros((2, 32, 32), bool)
    mask[0, 4:8, 8:12] = True  # all of cell (row 1, column 2)
    mask[1, 28:30, 28:32] = True  # half of the last cell
    shares = toy_scorer.cell_shares(mask, 8)
    assert shares.shape == (2, 64)
    assert shares[0, 1 * 8 + 2] == 1.0 and shares[0].sum() == 1.0
    assert shares[1, 63] == 0.5 and shares[1].sum() == 0.5


def test_scorer_checks_its_inputs():
    scorer = toy_scorer.ToyScorer()
    with pytest.raises(ConfigError):
        scorer.score(torch.zeros(1, 32, 32, 3), ["a red striped square above a blue dotted square"])
    with pytest.raises(ConfigError):
        scorer.score(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), ["a red striped square above a blue dotted square"])


def test_pixel_vae_is_exact():
    vae = toy_model.PixelVAE(factor=2, block_out_channels=(12, 12))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = vae.encode_pixels(x)
    assert z.shape == (2, 12, 16, 16)
    assert torch.equal(vae.decode(z).sample, x)
