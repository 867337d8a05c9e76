"""A job's pairs as a Parquet dataset a DPO user can load anywhere (torch-free).

One row per pair: the prompt, the winner and loser images, their scores, the item mask, the
trajectory refs and whether the epoch trained on the pair. Images are Hugging Face `Image` features (struct of PNG `bytes` and a `path`),
declared in the schema's `huggingface` metadata, so

    datasets.load_dataset("parquet", data_files="pairs.parquet")["train"][0]["winner_image"]

is a PIL image, and plain pyarrow/pandas readers see PNG bytes. For a fusion pair the winner is
the target (the base's trajectory steered by the reference inside the mask) and `winner_score` is
the scorer's value on the target's own image; `reference_score` is the reference sample's, which
steered it. For a plain pair the winner is the reference itself (both scores equal) and the mask is
empty. `winner_score` is null until the target was scored and `trained` null until the epoch's
train stage ran (false: the pair filter dropped it).

`winner_trajectory_key` / `loser_trajectory_key` keep their names but hold trajectory refs:
`<object key>#<member>`, a member (the pair id for a fused target, the sample id otherwise) of a
safetensors bundle of several trajectories (`dfusion_core.trajectories.unpack_trajectories(data)
[member]`). A job stored before bundles has plain object keys there, one whole trajectory each
(`Trajectory.from_bytes`).
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
from services.records import PairRecord, load_all
from services.state import JobRecord, JobStore

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
    ("reference_score", pa.float64()),
    ("trained", pa.bool_()),
    ("winner_trajectory_key", pa.string()),  # a ref, `key#member` (above)
    ("loser_trajectory_key", pa.string()),
    ("winner_sample_id", pa.string()),
    ("loser_sample_id", pa.string()),
])

_VALUE_TYPES = {pa.string(): "string", pa.int32(): "int32", pa.float64(): "float64", pa.bool_(): "bool"}


def hf_features() -> dict[str, Any]:
    """The `datasets` feature spec of SCHEMA (images as Image, the rest as Value)."""
    return {f.name: {"_type": "Image"} if f.type == _IMAGE else {"dtype": _VALUE_TYPES[f.type], "_type": "Value"}
            for f in SCHEMA}


def _image(store: BlobStore, key: str | None) -> dict[str, Any] | None:
    return {"bytes": store.get(key), "path": key.rsplit("/", 1)[-1]} if key else None


def pair_row(pair: PairRecord, store: BlobStore) -> dict[str, Any]:
    """One dataset row from a pair record (object keys -> bytes from the store)."""
    return {
        "pair_id": pair.id,
        "epoch": pair.epoch,
        "policy_version": pair.policy_version,
        "prompt_index": pair.prompt_index,
        "prompt": pair.prompt,
        "winner_image": _image(store, pair.target_image_key),
        "loser_image": _image(store, pair.base_image_key),
        "mask": _image(store, pair.mask_key),
        "winner_score": pair.target_score,
        "loser_score": pair.base_score,
        "reference_score": pair.reference_score,
        "trained": pair.trained,
        "winner_trajectory_key": pair.target_key,
        "loser_trajectory_key": pair.base_trajectory_key,
        "winner_sample_id": pair.reference,
        "loser_sample_id": pair.base,
    }


def pairs_table(pairs: Iterable[PairRecord], store: BlobStore, job_id: str = "") -> pa.Table:
    """The pairs (in pair-id order) as an Arrow table carrying the Hugging Face feature metadata."""
    rows = [pair_row(p, store) for p in sorted(pairs, key=lambda p: p.id)]
    meta = {"huggingface": json.dumps({"info": {"features": hf_features()}}), "dfusion_job_id": job_id}
    return pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata(meta))


def pairs_table_bytes(state: JobStore, store: BlobStore, job: JobRecord) -> bytes:
    """The job's pairs as Parquet file bytes (read whole into memory: sized for one job's pairs)."""
    buf = io.BytesIO()
    pq.write_table(pairs_table(load_all(PairRecord, state.list_pairs(job.job_id)), store, job.job_id), buf)
    return buf.getvalue()


def write_pairs_parquet(state: JobStore, store: BlobStore, job_id: str, path: str | Path) -> int:
    """Write the job's pairs to `path`; returns the number of rows."""
    table = pairs_table(load_all(PairRecord, state.list_pairs(job_id)), store, job_id)
    pq.write_table(table, str(path))
    return table.num_rows
