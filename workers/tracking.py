"""Experiment tracking: a job's curves and a few pairs, to TensorBoard, Weights & Biases or MLflow.

With `report_to` other than 'none', every published epoch logs (`log_epoch`, called once per epoch by
the train stage, `report_epoch`):
- `train/<name>`: every optimizer step's loss, margin, grad_norm, num_pairs and `extra` values
  (reward_accuracy, ...), at the trainer's global step;
- `epoch/<name>`: the epoch's numeric metrics (heldout_score, heldout_score_base, mean_sample_score,
  target_win_rate, ...), at the epoch;
- `pairs/<prompt_index>_<index>`: the epoch's first few pairs as one image, reference | base | target.

Where (`root`: the run folder for `dfusion run`, else $DFUSION_TRACKING_DIR, default .dfusion/tracking):
- tensorboard: event files in `<root>/tensorboard/` (the stack: `<root>/tensorboard/<job id>/`);
- wandb: `wandb.init` with WANDB_MODE, WANDB_DIR (default `<root>`), WANDB_PROJECT (default 'dfusion');
  a stack job is the run whose id is the job id (resume='allow': each epoch continues it);
- mlflow: MLFLOW_TRACKING_URI (default `sqlite:///<root>/mlflow.db`, images in `<root>/mlartifacts/`),
  experiment MLFLOW_EXPERIMENT_NAME (default 'dfusion'), one run per job tagged `dfusion.job_id`.

Each library is an optional extra (services.jobspec.TRACKING_EXTRAS), imported only when a job asks for it.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from dfusion_core.errors import ConfigError
from services.jobspec import missing_tracking_packages
from services.records import PairRecord

log = logging.getLogger(__name__)

PAIR_IMAGES = 4  # pairs logged as images per epoch
PROJECT = "dfusion"  # the W&B project and MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say
JOB_TAG = "dfusion.job_id"  # the MLflow tag that finds a job's run
_NOT_SCALARS = {"epoch", "policy_version"}


class Tracker(Protocol):
    def log_steps(self, steps: Sequence[tuple[int, dict[str, float]]]) -> None: ...
    def log_epoch(self, epoch: int, scalars: dict[str, float], images: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def tracking_dir() -> Path:
    """Where the stack's workers keep their trackers' local files: $DFUSION_TRACKING_DIR or .dfusion/tracking."""
    return Path(os.environ.get("DFUSION_TRACKING_DIR") or ".dfusion/tracking").resolve()


def make_tracker(report_to: str, root: Path, *, job_id: str | None = None, name: str | None = None) -> Tracker | None:
    """The tracker a job's `report_to` names (None for 'none'), its local files under `root`.

    job_id: the stack's job, whose run every epoch continues (TensorBoard: `<root>/tensorboard/<job_id>`);
    None: a run of its own (the embedded runner, `<root>/tensorboard`). name: the run's display name.
    """
    if report_to == "none":
        return None
    missing = missing_tracking_packages(report_to)
    if missing:
        raise ConfigError("report_to", missing)
    if report_to == "tensorboard":
        return TensorBoardTracker(root / "tensorboard" / (job_id or ""))
    if report_to == "wandb":
        return WandbTracker(root, job_id, name or job_id)
    if report_to == "mlflow":
        return MlflowTracker(root, job_id, name or job_id)
    raise ConfigError("report_to", f"unknown tracker {report_to!r}")


def log_epoch(tracker: Tracker, metrics: dict[str, Any], steps: Sequence[dict[str, Any]],
              pairs: Sequence[PairRecord], read: Callable[[str], bytes]) -> None:
    """metrics: the epoch's published metrics; steps: its optimizer steps (`asdict(StepMetrics)`);
    pairs: its pairs in (prompt, index) order; read: an object's bytes by key (the job's store)."""
    tracker.log_steps([(int(s["step"]), {k: float(v) for k, v in
                                         ({k: s[k] for k in ("loss", "margin", "grad_norm", "num_pairs")}
                                          | (s.get("extra") or {})).items()}) for s in steps])
    scalars = {k: float(v) for k, v in metrics.items()
               if k not in _NOT_SCALARS and isinstance(v, int | float) and not isinstance(v, bool)}
    images = {f"{p.prompt_index}_{p.index}": _triplet(p, read) for p in list(pairs)[:PAIR_IMAGES]}
    tracker.log_epoch(int(metrics["epoch"]), scalars, images)


# --- the runners' call sites ---------------------------------------------------------------------
_open: dict[str, Tracker] = {}  # job id -> the tracker a runner holds open for the whole job
_lock = threading.Lock()  # one epoch's logging at a time per process (W&B keeps process-wide state)


@contextmanager
def job_tracker(report_to: str, job_id: str, out: Path) -> Iterator[Tracker | None]:
    """The embedded runner's: one tracker for the whole job, its files in the run folder, used by
    `report_epoch`. A missing library raises ConfigError here, before the job starts."""
    tracker = make_tracker(report_to, out, name=out.resolve().name)
    if tracker is None:
        yield None
        return
    _open[job_id] = tracker
    try:
        yield tracker
    finally:
        del _open[job_id]
        tracker.close()


def report_epoch(read: Callable[[str], bytes], job_id: str, report_to: str, metrics: dict[str, Any],
                 steps: Sequence[dict[str, Any]], pairs: Sequence[PairRecord]) -> None:
    """The train stage's, once the epoch is published: to the runner's tracker (`job_tracker`), else
    (a stack worker) to the job's run opened for this epoch under `tracking_dir()`. Tracking never
    fails a job: an error is logged with the job id."""
    if report_to == "none":
        return
    try:
        with _lock:
            tracker = _open.get(job_id)
            if tracker is not None:
                log_epoch(tracker, metrics, steps, pairs, read)
                return
            tracker = make_tracker(report_to, tracking_dir(), job_id=job_id)
            assert tracker is not None
            try:
                log_epoch(tracker, metrics, steps, pairs, read)
            finally:
                tracker.close()
    except Exception as exc:  # noqa: BLE001 - the curves are a by-product; the trained weights are what counts
        log.error("job %s: report_to=%r could not log epoch %s: %s", job_id, report_to, metrics.get("epoch"), exc,
                  exc_info=not isinstance(exc, ConfigError), extra={"job_id": job_id})


# --- the backends --------------------------------------------------------------------------------
class TensorBoardTracker:
    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        self.writer = SummaryWriter(log_dir=str(logdir))

    def log_steps(self, steps: Sequence[tuple[int, dict[str, float]]]) -> None:
        for step, values in steps:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def log_epoch(self, epoch: int, scalars: dict[str, float], images: dict[str, Any]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(f"epoch/{name}", value, epoch)
        for name, image in images.items():
            self.writer.add_image(f"pairs/{name}", image, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run; `train/*` against `train/step`, `epoch/*` and `pairs/*` against `epoch`."""

    def __init__(self, root: Path, job_id: str | None, name: str | None) -> None:
        import wandb

        self.wandb = wandb
        wandb_dir = Path(os.environ.get("WANDB_DIR") or root)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, dir=str(wandb_dir), id=job_id,
                              name=name, resume="allow" if job_id else None, reinit="create_new",
                              config={"dfusion_job_id": job_id} if job_id else None,
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("train/step", hidden=True)
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("epoch", hidden=True)
        for pattern in ("epoch/*", "pairs/*"):
            self.run.define_metric(pattern, step_metric="epoch")

    def log_steps(self, steps: Sequence[tuple[int, dict[str, float]]]) -> None:
        for step, values in steps:
            self.run.log({**{f"train/{k}": v for k, v in values.items()}, "train/step": step})

    def log_epoch(self, epoch: int, scalars: dict[str, float], images: dict[str, Any]) -> None:
        self.run.log({**{f"epoch/{k}": v for k, v in scalars.items()},
                      **{f"pairs/{k}": self.wandb.Image(v) for k, v in images.items()}, "epoch": epoch})

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """One MLflow run per job (tag `dfusion.job_id`); a stack job's epochs find and continue it."""

    def __init__(self, root: Path, job_id: str | None, name: str | None) -> None:
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            import importlib.util

            missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
            if missing:
                raise ConfigError("report_to", f"'mlflow' keeps its runs in {root / 'mlflow.db'} unless "
                                               f"MLFLOW_TRACKING_URI names a server; that needs {' and '.join(missing)}: "
                                               "pip install 'dfusion[mlflow]'")
            root.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{root.resolve() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # images beside the default database; a server (MLFLOW_TRACKING_URI) picks its own
            location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root.resolve() / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(experiment_name, artifact_location=location)
        runs = self.client.search_runs([experiment_id], f"tags.`{JOB_TAG}` = '{job_id}'", max_results=1) \
            if job_id else []
        self.run_id = runs[0].info.run_id if runs else self.client.create_run(
            experiment_id, tags={JOB_TAG: job_id or "local"}, run_name=name).info.run_id
        if runs:
            self.client.update_run(self.run_id, status="RUNNING")

    def log_steps(self, steps: Sequence[tuple[int, dict[str, float]]]) -> None:
        self._metrics([(f"train/{k}", v, step) for step, values in steps for k, v in values.items()])

    def log_epoch(self, epoch: int, scalars: dict[str, float], images: dict[str, Any]) -> None:
        self._metrics([(f"epoch/{k}", v, epoch) for k, v in scalars.items()])
        for name, image in images.items():
            self.client.log_image(self.run_id, image, key=f"pairs/{name}", step=epoch)

    def _metrics(self, points: list[tuple[str, float, int]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for i in range(0, len(points), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, s) for k, v, s in points[i:i + 1000]])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _triplet(p: PairRecord, read: Callable[[str], bytes]) -> Any:
    """reference | base | target as one uint8 [H, 3W, 3] array."""
    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(io.BytesIO(read(k))).convert("RGB"))
              for k in (p.reference_image_key, p.base_image_key, p.target_image_key)]
    return np.concatenate(images, axis=1)
