"""Scorers: finite [B] scores, the tiny preset is deterministic, folders and names resolve."""

from __future__ import annotations

import pytest
import torch

from dfusion_core import registry
from dfusion_core.errors import ConfigError
from dfusion_core.registry import available_scorers, build_scorer, register_scorer
from dfusion_core.scoring import ClipScorer, Scorer, preprocess


def _images(n: int = 3, h: int = 64, w: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


PROMPTS = ["a cat eating a sandwich", "a dog", "a red woolen hat"]


def test_tiny_scorer_is_finite_and_deterministic():
    state = torch.random.get_rng_state()
    a, b = build_scorer("tiny"), build_scorer("tiny")
    assert torch.equal(torch.random.get_rng_state(), state)  # built under a forked RNG
    assert isinstance(a, Scorer)
    s1, s2 = a.score(_images(), PROMPTS), b.score(_images(), PROMPTS)
    assert s1.shape == (3,) and s1.dtype == torch.float32 and torch.isfinite(s1).all()
    assert torch.equal(s1, s2)
    assert (s1.abs() <= 1 + 1e-5).all()  # cosine similarity
    assert not torch.equal(a.score(_images(), PROMPTS[::-1]), s1)  # the prompt matters


def test_clip_score_is_cosine_of_embeddings():
    scorer = build_scorer("tiny")
    img = scorer.embed_images(_images())
    txt = scorer.embed_text(PROMPTS)
    expected = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert torch.allclose(scorer.score(_images(), PROMPTS), expected, atol=1e-6)


def test_clip_folder_round_trip(tmp_path):
    tiny = build_scorer("tiny")
    tiny.model.save_pretrained(tmp_path)
    loaded = build_scorer(str(tmp_path))
    assert isinstance(loaded, ClipScorer) and loaded.image_size == 32
    assert torch.allclose(loaded.score(_images(), PROMPTS), tiny.score(_images(), PROMPTS), atol=1e-6)


def test_preprocess_resizes_crops_and_normalises():
    x = preprocess(torch.full((2, 40, 80, 3), 255, dtype=torch.uint8), 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "cpu")
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.ones_like(x), atol=1e-5)
    with pytest.raises(ConfigError):
        preprocess(torch.zeros(2, 3, 8, 8), 16, (0, 0, 0), (1, 1, 1), "cpu")


@pytest.fixture
def _clean_registry():
    yield
    registry.SCORERS.pop("constant-test", None)


def test_registry_and_errors(_clean_registry):
    @register_scorer("constant-test")
    def _constant(device, dtype):
        class Constant:
            def score(self, images, prompts):
                return torch.zeros(len(prompts))
        return Constant()

    assert "constant-test" in available_scorers() and "tiny" in available_scorers()
    assert build_scorer("constant-test").score(_images(), PROMPTS).shape == (3,)
    with pytest.raises(ConfigError):
        register_scorer("tiny")(_constant)
    with pytest.raises(ConfigError, match="unknown scorer"):
        build_scorer("no-such-scorer")
    with pytest.raises(ConfigError):
        build_scorer("tiny").score(_images(2), PROMPTS)  # 3 prompts for 2 images


def test_openclip_is_optional():
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="openclip"):
            build_scorer("openclip:ViT-H-14:/nonexistent/weights.bin")
    else:
        pytest.skip("open_clip is installed; the missing-extra path is not reachable")


def test_load_prompts_splits():
    from dfusion_core.evaluation import load_prompts

    test = load_prompts("test")
    assert len(test) == 120 and all(r.split == "test" for r in test)
    assert len(load_prompts()) == 240 and len(load_prompts("train")) == 120
    first = load_prompts("train")[0]
    assert first.text == "a cat eating a sandwich" and first.items == ("cat", "sandwich")
    assert first.mask_thresholds == (0.03, 0.005) and first.template == "object-action"
    with pytest.raises(ConfigError):
        load_prompts("val")  # type: ignore[arg-type]


def test_load_prompts_rejects_bad_records(tmp_path):
    from dfusion_core.evaluation import load_prompts

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"text": "a cat", "items": ["cat"], "mask_thresholds": []}\n')
    with pytest.raises(ConfigError, match="mask_thresholds"):
        load_prompts(path=bad)


def test_evaluate_tiny_model_is_deterministic():
    from dfusion_core import models
    from dfusion_core.config import SamplingConfig
    from dfusion_core.evaluation import evaluate, evaluate_scores, load_prompts

    model, scorer = models.build_tiny(), build_scorer("tiny")
    prompts = load_prompts("test")[:2]
    cfg = SamplingConfig(num_steps=2, batch_size=4)
    scores = evaluate_scores(model, scorer, prompts, [0, 1], cfg)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert evaluate(model, scorer, prompts, [0, 1], cfg) == pytest.approx(float(scores.mean()))
