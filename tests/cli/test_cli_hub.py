"""`dfusion run --model org/tiny-sd` with HF_HOME at a local Hub-layout cache and HF_HUB_OFFLINE=1."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.run import build_spec
from dfusion_core.errors import ConfigError
from services.settings import get_settings
from tests.hubcache import REPO_ID, build_hub_cache

PROMPT = {"text": "a red and woolen dog", "items": ["woolen", "dog"], "mask_thresholds": [0.02, 0.03]}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    build_hub_cache(home)
    return home


def test_run_with_a_cached_hub_id_offline(tmp_path: Path, hf_home: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(PROMPT) + "\n")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "DFUSION_HF_HUB_CACHE")}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", str(prompts), "--model", REPO_ID, "--samples-per-prompt", "8",
         "--epochs", "1", "--steps", "2", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600,
        env={**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "succeeded", summary
    assert json.loads((out / "spec.json").read_text())["model"] == REPO_ID
    assert (out / "checkpoints" / "1" / "pytorch_lora_weights.safetensors").is_file()


def test_uncached_hub_id_offline_is_refused_naming_it(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    get_settings.cache_clear()
    args = argparse.Namespace(model="org/not-cached", revision=None, variant=None, samples_per_prompt=8, epochs=1,
                              seed=0, pairs="fusion", algorithm=None, steps=2)
    try:
        with pytest.raises(ConfigError, match="model: 'org/not-cached' is not in the Hugging Face cache"):
            build_spec([PROMPT], args)
        args.model = REPO_ID
        spec, models = build_spec([PROMPT], args)
        assert spec.model == REPO_ID and models == {}
    finally:
        get_settings.cache_clear()
