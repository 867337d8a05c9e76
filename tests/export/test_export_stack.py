"""The finished tiny job's pairs exported from the stack: every row matches its record and store."""

from __future__ import annotations

import io

import pytest

from workers.keys import split_ref

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
        # refs: `bundle key#member`, the winner a member of its chunk's target bundle
        assert row["winner_trajectory_key"] == rec["target_key"]
        assert row["loser_trajectory_key"] == rec["base_trajectory_key"]
        winner, loser = split_ref(row["winner_trajectory_key"]), split_ref(row["loser_trajectory_key"])
        assert {winner[0], loser[0]} <= keys and (winner[1], loser[1]) == (row["pair_id"], rec["base"])
        assert winner[0].endswith(".targets.safetensors")
        want = Image.open(io.BytesIO(store.get(rec["mask_key"])))
        assert row["mask"].tobytes() == want.tobytes() and row["mask"].size == want.size
        assert row["winner_image"].tobytes() == Image.open(io.BytesIO(store.get(rec["target_image_key"]))).tobytes()
