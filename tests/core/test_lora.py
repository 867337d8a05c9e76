"""LoRA: starts as the base model, switches off for pi_ref, and loads into stock diffusers."""

from __future__ import annotations

import pytest
import torch

from dfusion_core import models
from dfusion_core.errors import ConfigError
from dfusion_core.lora import (
    WEIGHTS_NAME,
    adapters_disabled,
    add_lora,
    load_lora_bytes,
    lora_bytes,
    lora_parameters,
    save_lora,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _fill_lora_b(unet, value: float = 0.05) -> None:
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.fill_(value)


def _unet_out(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 32, 32, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=ctx).sample


def test_fresh_lora_is_identity_and_disable_switches_it_off():
    model = models.build_tiny()
    base = _unet_out(model.unet)
    add_lora(model.unet, rank=4)
    assert torch.equal(_unet_out(model.unet), base)  # B = 0
    assert all(p.dtype == torch.float32 for p in lora_parameters(model.unet))
    _fill_lora_b(model.unet)
    assert not torch.allclose(_unet_out(model.unet), base)
    with adapters_disabled(model.unet):
        assert torch.equal(_unet_out(model.unet), base)
    with pytest.raises(ConfigError):
        add_lora(model.unet, rank=4)


def test_add_lora_is_seeded_and_leaves_global_rng_alone():
    a, b = models.build_tiny(), models.build_tiny()
    state = torch.random.get_rng_state()
    add_lora(a.unet, 4, seed=3)
    add_lora(b.unet, 4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(lora_parameters(a.unet), lora_parameters(b.unet), strict=True))


def test_bytes_round_trip():
    src = models.build_tiny()
    add_lora(src.unet, 4, seed=1)
    _fill_lora_b(src.unet)
    data = lora_bytes(src.unet)
    dst = models.build_tiny()
    load_lora_bytes(dst.unet, data)
    for x, y in zip(lora_parameters(src.unet), lora_parameters(dst.unet), strict=True):
        assert torch.equal(x, y)
    assert torch.equal(_unet_out(src.unet), _unet_out(dst.unet))


def test_saved_lora_loads_into_plain_diffusers(tmp_path):
    trained = models.build_tiny()
    add_lora(trained.unet, 4, seed=1)
    _fill_lora_b(trained.unet)
    path = save_lora(trained.unet, tmp_path / "saved")
    assert path.name == WEIGHTS_NAME and lora_bytes(trained.unet) == lora_bytes(trained.unet)
    # the checkpoint's canonical bytes are what the store holds: load those into stock diffusers
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / WEIGHTS_NAME).write_bytes(lora_bytes(trained.unet))

    def image(pipe) -> torch.Tensor:
        out = pipe("a cat", num_inference_steps=2, guidance_scale=5.0, height=64, width=64, output_type="pt",
                   generator=torch.Generator().manual_seed(0))
        return out.images

    pipe = models.to_diffusers_pipeline(models.build_tiny())
    pipe.set_progress_bar_config(disable=True)
    before = image(pipe)
    pipe.load_lora_weights(str(tmp_path / "ckpt"))
    after = image(pipe)
    assert not torch.allclose(before, after, atol=1e-4)
    assert torch.isfinite(after).all()
