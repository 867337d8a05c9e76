"""Hub ids resolve through a local Hugging Face cache in the Hub's layout (tests/hubcache.py), offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfusion_core.errors import ConfigError
from dfusion_core.hub import (
    PIPELINE_INDEX,
    HubOptions,
    HubUnavailable,
    is_cached,
    is_hub_id,
    load_error,
    resolve_revision,
)
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


def test_a_missing_variant_or_revision_is_reported_as_what_it_is(hub_cache: Path) -> None:
    """Not "the model is not in the cache": the field the job got wrong, named."""
    hub = HubOptions(cache_dir=hub_cache, offline=True)
    with pytest.raises(ConfigError) as variant:
        load_model(REPO_ID, hub=hub, variant="fp16")
    assert variant.value.field == "variant" and "fp16" in str(variant.value)
    with pytest.raises(ConfigError) as revision:
        load_model(REPO_ID, hub=hub, revision="v9")
    assert revision.value.field == "revision" and "v9" in str(revision.value)
    with pytest.raises(ConfigError) as model:
        load_model("org/absent", hub=hub)
    assert model.value.field == "model" and "org/absent" in str(model.value)


def _wrapped(cause: BaseException) -> OSError:
    """`cause` as diffusers reports it: an OSError raised from huggingface_hub's error, raised from it."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            try:
                raise cause
            except BaseException as e:
                raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from e
        except LocalEntryNotFoundError as e:
            raise OSError(f"{REPO_ID} does not appear to have a file named config.json.") from e
    except OSError as e:
        return e


def test_a_hub_that_does_not_answer_is_transient_not_the_job_s_fault() -> None:
    """Online, a refused connection under huggingface_hub's error is HubUnavailable, a ConnectionError
    (the task wrapper retries those), never a ConfigError that fails the job; offline, a file not in
    the cache is the job's ConfigError. (The chains are built as diffusers raises them: the Hub
    cannot be reached from the tests.)"""
    refused = _wrapped(ConnectionRefusedError(111, "Connection refused"))
    online = load_error(refused, REPO_ID, None, None, offline=False)
    assert isinstance(online, HubUnavailable) and isinstance(online, ConnectionError)
    assert not isinstance(online, ConfigError)
    offline = load_error(_wrapped(FileNotFoundError("not cached")), REPO_ID, None, None, offline=True)
    assert isinstance(offline, ConfigError) and offline.field == "model"


def test_main_resolves_to_the_commit_the_cache_holds(hub_cache: Path) -> None:
    assert resolve_revision(REPO_ID, cache_dir=hub_cache, offline=True) == REVISION
    assert resolve_revision(REPO_ID, "main", cache_dir=hub_cache, offline=True) == REVISION
    assert resolve_revision(REPO_ID, REVISION, cache_dir=hub_cache, offline=True) == REVISION
    assert resolve_revision("org/absent", cache_dir=hub_cache, offline=True) is None
