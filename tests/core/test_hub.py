"""Hub ids resolve through a local Hugging Face cache in the Hub's layout (tests/hubcache.py), offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfusion_core.errors import ConfigError
from dfusion_core.hub import PIPELINE_INDEX, HubOptions, is_cached, is_hub_id
from dfusion_core.models import build_tiny
from dfusion_core.registry import load_model
from tests.hubcache import REPO_ID, REVISION, build_hub_cache


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hub_cache(tmp_path_factory.mktemp("hf_home"))


def test_hub_ids_are_owner_slash_name() -> None:
    for name in ("org/tiny-sd", "stabilityai/stable-diffusion-2-1-base", "a.b/c_d"):
        assert is_hub_id(name), name
    for name in ("tiny", "toy", "/abs/path", "a/b/c", "../x", "org/..", "a--b/c", "org/", "./x"):
        assert not is_hub_id(name), name


def test_is_cached_reads_the_cache(hub_cache: Path) -> None:
    assert is_cached(REPO_ID, PIPELINE_INDEX, cache_dir=hub_cache)
    assert is_cached(REPO_ID, PIPELINE_INDEX, revision=REVISION, cache_dir=hub_cache)
    assert not is_cached("org/absent", PIPELINE_INDEX, cache_dir=hub_cache)


def test_hub_id_loads_the_cached_snapshot(hub_cache: Path) -> None:
    hub = HubOptions(cache_dir=hub_cache, offline=True)
    model = load_model(REPO_ID, hub=hub, revision=REVISION)
    tiny = build_tiny()
    assert model.name == REPO_ID
    for (name, got), want in zip(model.unet.state_dict().items(), tiny.unet.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    assert model.tokenizer.model_max_length == tiny.tokenizer.model_max_length


def test_uncached_hub_id_names_the_model(hub_cache: Path) -> None:
    with pytest.raises(ConfigError, match="'org/absent'.*not in the Hugging Face cache.*hf download org/absent"):
        load_model("org/absent", hub=HubOptions(cache_dir=hub_cache, offline=True))


def test_missing_variant_names_the_model(hub_cache: Path) -> None:
    with pytest.raises(ConfigError, match=REPO_ID):
        load_model(REPO_ID, variant="fp16", hub=HubOptions(cache_dir=hub_cache, offline=True))


def test_local_diffusers_folder_still_loads(tmp_path: Path) -> None:
    from dfusion_core.models import save_model

    folder = save_model(build_tiny(), tmp_path / "tiny-sd")
    model = load_model(folder)
    assert torch.equal(model.unet.conv_in.weight, build_tiny().unet.conv_in.weight)
