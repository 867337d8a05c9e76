"""A job's pairs as a Parquet dataset a DPO user can load anywhere (torch-free).

One row per pair: the prompt, the winner and loser images, their scores, the item mask and the
trajectory keys. Images are Hugging Face `Image` features (struct of PNG `bytes` and a `path`),
declared in the schema's `huggingface` metadata, so

    datasets.load_dataset("parquet", data_files="pairs.parquet")["train"][0]["winner_image"]

is a PIL image, and plain pyarrow/pandas readers see PNG bytes. For a fusion pair the winner is
the target (the base's trajectory steered by the reference inside the mask) and its score is the
reference's; for a plain pair the winner is the reference itself and the mask is empty.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dfusion_core.storage import BlobStore
from services.state import JobState
from services.state_types import JobRecord

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

SCHEMA = pa.schema([
    ("pair_id", pa.string()),
    ("epoch", pa.int32()),
    ("policy_version", pa.int32()),
    ("prompt_index", pa.int32()),
    ("prompt", pa.string()),
    ("winner_image", _IMAGE),
    ("loser_image", _IMAGE),
    ("mask", _IMAGE),
    ("winner_score", pa.float64()),
    ("loser_score", pa.float64()),
    ("winner_trajectory_key", pa.string()),
    ("loser_trajectory_key", pa.string()),
    ("winner_sample_id", pa.string()),
    ("loser_sample_id", pa.string()),
])

_VALUE_TYPES = {pa.string(): "string", pa.int32(): "int32", pa.float64(): "float64"}


def hf_features() -> dict[str, Any]:
    """The `datasets` feature spec of SCHEMA (images as Image, the rest as Value)."""
    return {f.name: {"_type": "Image"} if f.type == _IMAGE else {"dtype": _VALUE_TYPES[f.type], "_type": "Value"}
            for f in SCHEMA}


def _image(store: BlobStore, key: str | None) -> dict[str, Any] | None:
    return {"bytes": store.get(key), "path": key.rsplit("/", 1)[-1]} if key else None


def pair_row(record: dict[str, Any], store: BlobStore) -> dict[str, Any]:
    """One dataset row from a pair record as the fuse stage writes it (keys -> bytes from the store)."""
    return {
        "pair_id": record["id"],
        "epoch": record.get("epoch"),
        "policy_version": record.get("policy_version", record.get("epoch")),
        "prompt_index": record.get("prompt_index"),
        "prompt": record.get("prompt"),
        "winner_image": _image(store, record.get("target_image_key")),
        "loser_image": _image(store, record.get("base_image_key")),
        "mask": _image(store, record.get("mask_key")),
        "winner_score": record.get("reference_score"),
        "loser_score": record.get("base_score"),
        "winner_trajectory_key": record.get("target_key"),
        "loser_trajectory_key": record.get("base_trajectory_key"),
        "winner_sample_id": record.get("reference"),
        "loser_sample_id": record.get("base"),
    }


def pairs_table(records: Iterable[dict[str, Any]], store: BlobStore, job_id: str = "") -> pa.Table:
    """The pairs (in pair-id order) as an Arrow table carrying the Hugging Face feature metadata."""
    rows = [pair_row(r, store) for r in sorted(records, key=lambda r: r["id"])]
    meta = {"huggingface": json.dumps({"info": {"features": hf_features()}}), "dfusion_job_id": job_id}
    return pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata(meta))


def pairs_table_bytes(state: JobState, store: BlobStore, job: JobRecord) -> bytes:
    """The job's pairs as Parquet file bytes (read whole into memory: sized for one job's pairs)."""
    buf = io.BytesIO()
    pq.write_table(pairs_table(state.list_pairs(job.job_id).values(), store, job.job_id), buf)
    return buf.getvalue()


def write_pairs_parquet(state: JobState, store: BlobStore, job_id: str, path: str | Path) -> int:
    """Write the job's pairs to `path`; returns the number of rows."""
    table = pairs_table(state.list_pairs(job_id).values(), store, job_id)
    pq.write_table(table, str(path))
    return table.num_rows
