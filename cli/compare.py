"""dfusion compare JOB "PROMPT" [--seeds 4] [--items W ...] [--version V] [--out compare.png]:
a finished job's trained policy beside its base on the same noise, as one side-by-side PNG.

Asks the API (POST /v1/jobs/JOB/compare), waits for the worker, downloads each seed's base and
trained image (and with --items the trained model's item masks) and writes one row per seed:
base | trained | masks, each labelled with its seed and scores. Prints the scores on stderr and
the PNG's path on stdout. JOB may instead be the folder of a `dfusion run` or `dfusion demo`: the
compare is then computed in this process (embedded mode), its images kept under FOLDER/compare/.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from cli.client import ApiError, Client, add_api_arguments

#: Each image is drawn at least this many pixels wide (small models make 32 or 64 px images).
MIN_SIDE = 128
LABEL_H = 16
GAP = 4  # white pixels between tiles


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job id (as printed by `dfusion submit`; the job must have finished), or the "
                               "folder of a `dfusion run` / `dfusion demo` (computed here, no API)")
    p.add_argument("prompt", help="the prompt to sample with both models")
    p.add_argument("--seeds", default="4", type=_seeds,
                   help="how many seeds (1..8: seeds 0..N-1), or the seeds themselves, comma-separated (default 4)")
    p.add_argument("--items", nargs="+", default=[], metavar="WORD",
                   help="words of the prompt whose item masks the trained model shows")
    p.add_argument("--thresholds", nargs="+", type=float, default=None, metavar="T",
                   help="one mask threshold per item in [0, 1] (default: the job's for the same word)")
    p.add_argument("--version", type=int, default=None, help="policy version (default: the job's latest)")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="the PNG to write (default compare.png)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the worker (default 600)")
    p.add_argument("--device", default=None, help="a run folder's compare: torch device (default: cuda if available)")
    add_api_arguments(p)


def _seeds(value: str) -> int | list[int]:
    try:
        parts = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a count nor comma-separated seeds") from None
    return parts[0] if "," not in value and len(parts) == 1 else parts


def run(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"prompt": args.prompt, "items": args.items, "seeds": args.seeds}
    if args.thresholds is not None:
        body["mask_thresholds"] = args.thresholds
    if args.version is not None:
        body["version"] = args.version
    folder = Path(args.job)
    if (folder / "spec.json").is_file():
        result, rows = _local(folder, body, args.device)
    else:
        with Client.from_args(args) as client:
            what = f"compare for job {args.job}"
            result = _wait(client, client.compare(args.job, body)["url"], what, args.timeout)
            rows = _rows(result, client.get_bytes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(rows).save(args.out, format="PNG")
    for s in result["results"]:
        print(f"seed {s['seed']}: base {s['base_score']:.4f}  v{result['version']} {s['trained_score']:.4f}",
              file=sys.stderr)
    print(f"mean score: base {result['base_mean_score']:.4f}  v{result['version']} "
          f"{result['trained_mean_score']:.4f}", file=sys.stderr)
    print(args.out)
    return 0


def _local(folder: Path, body: dict[str, Any], device: str | None) -> tuple[dict[str, Any], Rows]:
    """The compare computed here on a run folder, as the API would answer it (object keys for URLs)."""
    from pydantic import ValidationError

    from dfusion_core.errors import ConfigError
    from services.compare import CompareCreate
    from workers.compare import compare_run_folder

    try:
        request = CompareCreate.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "body"
        raise ConfigError(field, str(first["msg"]).removeprefix("Value error, ")) from None
    record, store = compare_run_folder(folder, request, device=device)
    if record.error:
        raise ApiError(f"compare on {folder} failed: {record.error}")
    results = [{**r.dump(), "base_image_url": r.base_image_key, "trained_image_url": r.trained_image_key,
                "masks": [{"item": item, "url": k} for item, k in zip(record.items, r.mask_keys, strict=True)]}
               for r in record.results]
    n = len(results)
    result = {"version": record.version, "results": results,
              "base_mean_score": sum(r["base_score"] for r in results) / n,
              "trained_mean_score": sum(r["trained_score"] for r in results) / n}
    return result, _rows(result, lambda key, what: store.get(key))


def _wait(client: Client, url: str, what: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = client.get_json(url, what)
        if result["status"] == "succeeded":
            return result
        if result["status"] == "failed":
            raise ApiError(f"{what} failed: {result.get('error')}")
        if time.monotonic() > deadline:
            raise ApiError(f"{what} still {result['status']} after {timeout_s:g} s; is a sample worker running? "
                           f"(`dfusion stack status`); it goes on: GET {url}")
        time.sleep(0.5)


Fetch = Callable[[str, str], bytes]  # (url or object key, what it is) -> bytes
Rows = list[list[tuple[str, Image.Image]]]


def _image(fetch: Fetch, url: str, what: str) -> Image.Image:
    with Image.open(io.BytesIO(fetch(url, what))) as im:
        return im.convert("RGB")


def _rows(result: dict[str, Any], fetch: Fetch) -> Rows:
    """One row per seed: (label, image) of the base, the trained image and each item mask."""
    rows = []
    for s in result["results"]:
        seed = s["seed"]
        base = _image(fetch, s["base_image_url"], f"base image, seed {seed}")
        trained = _image(fetch, s["trained_image_url"], f"trained image, seed {seed}")
        rows.append([(f"seed {seed}: base {s['base_score']:.3f}", base),
                     (f"trained v{result['version']} {s['trained_score']:.3f}", trained)]
                    + [(f"mask {m['item']}", _image(fetch, m["url"], f"mask of {m['item']}, seed {seed}"))
                       for m in s["masks"]])
    return rows


def side_by_side(rows: Rows) -> Image.Image:
    """One row per seed of labelled tiles (base | trained | masks), small images scaled up (nearest)."""
    side = max([MIN_SIDE] + [im.width for row in rows for _, im in row])
    cols = max(len(row) for row in rows)
    sheet = Image.new("RGB", (cols * (side + GAP) - GAP, len(rows) * (side + LABEL_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (label, im) in enumerate(row):
            x, y = c * (side + GAP), r * (side + LABEL_H)
            draw.text((x + 2, y + 2), label, fill="black")
            sheet.paste(im.resize((side, side * im.height // im.width), Image.Resampling.NEAREST), (x, y + LABEL_H))
    return sheet
