"""The finished tiny job's pairs exported from the stack: every row matches its record and store."""

from __future__ import annotations

import io

import pytest

pytestmark = pytest.mark.integration


def test_exported_rows_match_the_job_records(stack, tiny_job, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    with stack.client() as c:
        r = c.get(f"/jobs/{tiny_job.id}/pairs.parquet")
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    path = tmp_path / "pairs.parquet"
    path.write_bytes(r.content)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")

    records, store = stack.state().list_pairs(tiny_job.id), stack.store()
    assert sorted(records) == ds["pair_id"]
    keys = set(store.list(f"jobs/{tiny_job.id}/"))
    prompts = [p["text"] for p in stack.state().get_job(tiny_job.id).spec["prompts"]]
    for row in ds:
        rec = records[row["pair_id"]]
        assert row["prompt"] == prompts[row["prompt_index"]]
        assert (row["winner_score"], row["loser_score"]) == (rec["target_score"], rec["base_score"])
        assert row["winner_score"] is not None and row["reference_score"] == rec["reference_score"]
        assert row["trained"] is rec["trained"] and row["trained"] is not None  # the job finished: filter ran
        assert {row["winner_trajectory_key"], row["loser_trajectory_key"]} <= keys
        assert row["winner_trajectory_key"].endswith(".target.safetensors")
        want = Image.open(io.BytesIO(store.get(rec["mask_key"])))
        assert row["mask"].tobytes() == want.tobytes() and row["mask"].size == want.size
        assert row["winner_image"].tobytes() == Image.open(io.BytesIO(store.get(rec["target_image_key"]))).tobytes()
