"""Pairs -> Parquet -> datasets.load_dataset: every field and image survives the round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dfusion_core.storage import LocalDirStore
from services.export import SCHEMA, pairs_table
from services.records import PairRecord

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")


def _png(seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _records(store: LocalDirStore) -> list[PairRecord]:
    """Two fused pairs (the second with its target not yet scored) and one plain pair."""
    out = []
    target_scores, trained = [2.25, None, 2.5], [True, None, False]
    for i, fusion in enumerate([True, True, False]):
        pid, base, ref = f"e0-p000-k{i:03d}", f"e0-p000-s{2 * i:03d}", f"e0-p000-s{2 * i + 1:03d}"
        keys = {k: f"jobs/j/e0/{k}/{pid}.png" for k in ("base", "ref", "target", "mask")}
        for n, (name, key) in enumerate(keys.items()):
            store.put(key, _png(10 * i + n, "L" if name == "mask" else "RGB"), "image/png")
        out.append(PairRecord.load({
            "id": pid, "epoch": 0, "prompt_index": 0, "index": i, "prompt": "a cat eating a sandwich",
            "reference": ref, "base": base, "reference_score": 0.5 + i, "base_score": 0.1 * i,
            "reference_image_key": keys["ref"], "base_image_key": keys["base"],
            "base_trajectory_key": f"jobs/j/e0/samples/e0-p000-b000.safetensors#{base}",
            "target_key": f"jobs/j/e0/pairs/e0-p000-c000.targets.safetensors#{pid}" if fusion
            else f"jobs/j/e0/samples/e0-p000-b000.safetensors#{ref}",
            "target_image_key": keys["target"] if fusion else keys["ref"],
            "mask_key": keys["mask"] if fusion else None, "policy_version": 0,
            "target_score": target_scores[i], "trained": trained[i],
        }))
    return out


def test_pairs_round_trip_through_datasets(tmp_path):
    store = LocalDirStore(tmp_path / "store")
    records = _records(store)
    path = tmp_path / "pairs.parquet"
    pq.write_table(pairs_table(reversed(records), store, "j"), path)

    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds.column_names == SCHEMA.names
    assert isinstance(ds.features["winner_image"], datasets.Image)
    assert isinstance(ds.features["mask"], datasets.Image)
    assert isinstance(ds.features["trained"], datasets.Value) and ds.features["trained"].dtype == "bool"
    assert ds.num_rows == 3 and ds["pair_id"] == [r.id for r in records]  # sorted by pair id
    for row, rec in zip(ds, records, strict=True):
        assert row["prompt"] == rec.prompt
        assert row["winner_score"] == rec.target_score and row["loser_score"] == rec.base_score
        assert row["reference_score"] == rec.reference_score and row["trained"] == rec.trained
        assert row["winner_trajectory_key"] == rec.target_key
        assert row["loser_trajectory_key"] == rec.base_trajectory_key
        assert (row["winner_sample_id"], row["loser_sample_id"]) == (rec.reference, rec.base)
        assert (row["epoch"], row["policy_version"]) == (0, 0)
        want_winner = Image.open(io.BytesIO(store.get(rec.target_image_key)))
        assert np.array_equal(np.asarray(row["winner_image"]), np.asarray(want_winner))
        want_loser = Image.open(io.BytesIO(store.get(rec.base_image_key)))
        assert np.array_equal(np.asarray(row["loser_image"]), np.asarray(want_loser))
        if rec.mask_key:
            assert row["mask"].mode == "L" and row["mask"].size == (8, 8)
        else:
            assert row["mask"] is None


def test_plain_readers_see_png_bytes(tmp_path):
    store = LocalDirStore(tmp_path / "store")
    records = _records(store)
    path = tmp_path / "pairs.parquet"
    pq.write_table(pairs_table(records, store, "j"), path)
    table = pq.read_table(path)
    first = table.column("winner_image")[0].as_py()
    assert first["bytes"] == store.get(records[0].target_image_key) and first["bytes"][:4] == b"\x89PNG"
    assert table.schema.metadata[b"dfusion_job_id"] == b"j"


def test_winner_score_is_the_targets_own_not_the_references(tmp_path):
    store = LocalDirStore(tmp_path / "store")
    fused, unscored, plain = _records(store)
    rows = pairs_table([fused, unscored, plain], store, "j").to_pylist()
    assert (rows[0]["winner_score"], rows[0]["reference_score"]) == (2.25, 0.5)  # the target's, not the reference's
    assert rows[1]["winner_score"] is None and rows[1]["trained"] is None  # not yet scored / trained
    assert rows[2]["winner_score"] == rows[2]["reference_score"] == 2.5  # a plain pair's winner is the reference
    assert [r["trained"] for r in rows] == [True, None, False]
