"""Checkpoints through a BlobStore: resume is bit-identical; the format has no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save

from dfusion_core import models, pipeline
from dfusion_core.checkpoint import (
    STATE_NAME,
    checkpoint_key,
    latest_step,
    list_steps,
    load_checkpoint,
    read_header,
    save_checkpoint,
    start_or_resume,
    train_unit,
)
from dfusion_core.config import SamplingConfig, TrainingConfig
from dfusion_core.errors import ConfigError
from dfusion_core.lora import WEIGHTS_NAME
from dfusion_core.storage import LocalDirStore
from dfusion_core.training import Trainer, TrainPair

CONFIG = TrainingConfig(learning_rate=1e-2, beta=1.0, timestep_fraction=0.5, batch_pairs=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs() -> list[TrainPair]:
    s = pipeline.sample(models.build_tiny(), ["a cat", "a cat"], SamplingConfig(num_steps=2), seeds=[0, 1],
                        decode=False)
    return [TrainPair(s[0], s[1], 1.0, 0.0)]


def test_resume_is_bit_identical(tmp_path, pairs):
    straight = Trainer(models.build_tiny(), CONFIG, seed=7)
    for _ in range(4):
        straight.train_step(pairs)

    store = LocalDirStore(tmp_path)
    first = Trainer(models.build_tiny(), CONFIG, seed=7)
    for _ in range(2):
        first.train_step(pairs)
    step = save_checkpoint(store, "jobs/j1/lora", first)
    assert step == 2 and latest_step(store, "jobs/j1/lora") == 2
    del first

    resumed = load_checkpoint(store, "jobs/j1/lora", step, models.build_tiny())
    assert resumed.optimizer_step == 2 and resumed.seed == 7 and resumed.config == CONFIG
    for _ in range(2):
        resumed.train_step(pairs)
    assert resumed.optimizer_step == straight.optimizer_step == 4
    assert resumed.parameter_names == straight.parameter_names
    for a, b in zip(straight.parameters, resumed.parameters, strict=True):
        assert torch.equal(a, b)


def test_layout_versions_and_no_pickle(tmp_path, pairs):
    store = LocalDirStore(tmp_path)
    trainer = Trainer(models.build_tiny(), CONFIG)
    assert latest_step(store, "ck") is None
    save_checkpoint(store, "ck", trainer)
    trainer.train_step(pairs)
    save_checkpoint(store, "ck/", trainer)
    store.put("ck/9/" + WEIGHTS_NAME, b"partial")  # no state file: incomplete, ignored
    assert store.list("ck") == sorted([f"ck/{v}/{n}" for v in (0, 1) for n in (WEIGHTS_NAME, STATE_NAME)]
                                      + ["ck/9/" + WEIGHTS_NAME])
    assert list_steps(store, "ck") == [0, 1] and latest_step(store, "ck") == 1
    data = store.get(checkpoint_key("ck", 1, STATE_NAME))
    assert not data.startswith(b"\x80") and b"PK" not in data[:4]  # safetensors, not pickle / zip
    header = read_header(data)
    assert header["step"] == 1 and header["config"]["learning_rate"] == CONFIG.learning_rate
    tensors = load(data)
    assert any(k.endswith("/exp_avg_sq") for k in tensors)


def test_load_with_new_config_overrides_learning_rate(tmp_path, pairs):
    store = LocalDirStore(tmp_path)
    trainer = Trainer(models.build_tiny(), CONFIG)
    trainer.train_step(pairs)
    save_checkpoint(store, "ck", trainer)
    new = CONFIG.model_copy(update={"learning_rate": 1e-3})
    loaded = load_checkpoint(store, "ck", 1, models.build_tiny(), config=new)
    assert loaded.optimizer.param_groups[0]["lr"] == 1e-3
    for a, b in zip(trainer.parameters, loaded.parameters, strict=True):
        assert torch.equal(a, b)


def test_a_file_from_before_the_rename_loads(tmp_path, pairs):
    """Trainer states written before `optimizer_step` also carry "policy_version" (= "step")."""
    store = LocalDirStore(tmp_path)
    trainer = Trainer(models.build_tiny(), CONFIG)
    trainer.train_step(pairs)
    save_checkpoint(store, "ck", trainer)
    data = store.get(checkpoint_key("ck", 1, STATE_NAME))
    old = {**read_header(data), "policy_version": 1}
    store.put(checkpoint_key("ck", 1, STATE_NAME), save(load(data), metadata={"dfusion": json.dumps(old)}))
    assert load_checkpoint(store, "ck", 1, models.build_tiny()).optimizer_step == 1


def test_train_unit_resumes_where_the_last_one_saved(tmp_path, pairs):
    """Two units (fresh, then resumed) on one model object equal two straight epochs."""
    straight = start_or_resume(models.build_tiny(), CONFIG, store=LocalDirStore(tmp_path / "none"),
                               resume_from=None, seed=7, lora_seed=3)
    straight.train_epoch(pairs)
    straight.train_epoch(pairs)
    store, model = LocalDirStore(tmp_path), models.build_tiny()
    first = train_unit(model, CONFIG, pairs, store=store, resume_from=None, save_to="u/e0", seed=7, lora_seed=3)
    assert [m.step for m in first.steps] == [1] and set(first.before) == {"reward_accuracy", "reward_margin"}
    second = train_unit(model, CONFIG, pairs, store=store, resume_from="u/e0", save_to="u/e1", seed=0, lora_seed=0)
    assert [m.step for m in second.steps] == [2] and list_steps(store, "u/e1") == [2]
    for a, b in zip(straight.parameters, second.trainer.parameters, strict=True):
        assert torch.equal(a, b)
    empty = train_unit(model, CONFIG, [], store=store, resume_from="u/e1", save_to="u/e2", seed=0, lora_seed=0)
    assert (empty.steps, empty.before, list_steps(store, "u/e2")) == ([], {}, [2])
    with pytest.raises(ConfigError, match="resume_from"):
        start_or_resume(model, CONFIG, store=store, resume_from="u/e9", seed=0, lora_seed=0)
