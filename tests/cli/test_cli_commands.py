"""dfusion submit / watch / pairs / checkpoint / export against the local stack, in-process."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from devstack.harness import TINY_JOB

pytestmark = pytest.mark.integration


def _prompts(tmp_path, rows=None):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (rows or TINY_JOB["prompts"])) + "\n")
    return path


def test_submit_prints_the_job_id(api_env, tmp_path, capsys):
    assert main(["submit", str(_prompts(tmp_path)), "--samples-per-prompt", "4", "--steps", "4",
                 "--eval-prompt", "a horse driving a car", "--eval-seeds", "1"]) == 0
    job_id = capsys.readouterr().out.strip()
    with api_env.client() as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
        c.delete(f"/v1/jobs/{job_id}")  # only the submission is under test
    assert job["spec"]["prompts"] == [p["text"] for p in TINY_JOB["prompts"]] and job["spec"]["total_samples"] == 8


def test_submit_reports_the_rejected_field(api_env, tmp_path, capsys):
    assert main(["submit", str(_prompts(tmp_path)), "--samples-per-prompt", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dfusion submit: error: job rejected:") and "multiple of 4" in err
    bad = _prompts(tmp_path, [{"text": "a cat", "items": ["dog"], "mask_thresholds": [0.1]}])
    assert main(["submit", str(bad)]) == 2
    assert "is not a word of the prompt" in capsys.readouterr().err


def test_watch_draws_a_bar_per_stage_and_exits_with_the_status(api_env, tiny_job, capsys):
    assert main(["watch", tiny_job.id, "--interval", "0.1"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"{tiny_job.id} succeeded") and f"pairs={len(tiny_job.pairs)}" in out.out
    for stage in ("samples", "scored", "pairs", "trained steps"):
        assert stage in out.err
    n = len(tiny_job.samples)
    assert f"{n}/{n}" in out.err  # samples and scored bars complete


def test_watch_follows_a_job_until_it_ends(api_env, tmp_path, capsys):
    assert main(["submit", str(_prompts(tmp_path)), "--samples-per-prompt", "4", "--steps", "4"]) == 0
    job_id = capsys.readouterr().out.strip()
    with api_env.client() as c:
        c.delete(f"/v1/jobs/{job_id}")
    assert main(["watch", job_id, "--no-progress", "--interval", "0.1", "--timeout", "60"]) == 1
    assert capsys.readouterr().out.startswith(f"{job_id} cancelled")


def test_pairs_downloads_every_triplet_and_mask(api_env, tiny_job, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["pairs", tiny_job.id, "--out", str(out)]) == 0
    index = json.loads((out / "pairs.json").read_text())
    assert [p["id"] for p in index] == sorted(p["id"] for p in tiny_job.pairs)
    for p in index:
        for name in ("base", "reference", "target", "mask"):
            assert (out / p["files"][name]).read_bytes()[:4] == b"\x89PNG"
        assert isinstance(p["reference_score"], float)


def test_checkpoint_downloads_the_latest_lora(api_env, tiny_job, tmp_path, capsys):
    from safetensors.numpy import load_file

    assert main(["checkpoint", tiny_job.id, "--out", str(tmp_path / "ckpt")]) == 0
    path = tmp_path / "ckpt" / "pytorch_lora_weights.safetensors"
    assert capsys.readouterr().out.strip() == str(path)
    assert any("lora" in k for k in load_file(path))
    assert main(["checkpoint", tiny_job.id, "--version", "9", "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint version 9; available: 1, 2" in capsys.readouterr().err  # a version per epoch


def test_export_writes_a_parquet_dataset(api_env, tiny_job, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "pairs.parquet"
    assert main(["export", tiny_job.id, "--out", str(path)]) == 0
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds.num_rows == len(tiny_job.pairs)
    assert ds[0]["winner_image"].size == ds[0]["loser_image"].size == ds[0]["mask"].size


@pytest.mark.parametrize("argv", [["watch", "nope"], ["pairs", "nope", "--out", "x"],
                                  ["checkpoint", "nope", "--out", "x"], ["export", "nope", "--out", "x.parquet"]])
def test_unknown_jobs_are_one_line_errors(api_env, argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dfusion {argv[0]}: error: job nope not found (or it belongs to another tenant)"


def test_a_bad_token_is_a_one_line_error(api_env, capsys):
    assert main(["watch", "nope", "--token", "wrong"]) == 2
    assert "not authenticated (unknown token): pass --token or set DFUSION_TOKEN" in capsys.readouterr().err
