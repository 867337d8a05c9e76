"""report_to='wandb' and 'mlflow' (workers/tracking.py), read back with each library's own reader:
W&B offline (its `wandb leet inspect --json` reader over the run's .wandb log, and the media files),
MLflow on its default local store in a temporary folder (`MlflowClient`). Two epochs of made-up
metrics and pairs with solid-colour images: no model runs here.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dfusion_core.errors import ConfigError
from services.records import PairRecord
from workers import tracking

JOB = "0123456789abcdef0123456789abcdef"  # a stack job id (uuid4 hex)
COLOURS = {"ref": (255, 0, 0), "base": (0, 255, 0), "target": (0, 0, 255)}
H, W = 6, 4


def _png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (W, H), rgb).save(buf, format="PNG")
    return buf.getvalue()


OBJECTS = {f"{side}.png": _png(rgb) for side, rgb in COLOURS.items()}


def _epoch(epoch: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[PairRecord]]:
    """Epoch `epoch`'s published metrics, its two optimizer steps (global steps 2e+1, 2e+2) and five pairs."""
    steps = [{"step": 2 * epoch + k, "loss": 0.5 - 0.1 * (2 * epoch + k), "margin": 0.1 * k, "grad_norm": 1.0,
              "num_pairs": 2, "extra": {"reward_accuracy": 0.5}} for k in (1, 2)]
    metrics = {"epoch": epoch, "policy_version": epoch + 1, "loss": 0.3, "heldout_score": 0.2 + 0.1 * epoch,
               "heldout_score_base": 0.2, "target_win_rate": 1.0, "mean_target_gain": None, "optimizer_steps": 2}
    pairs = [PairRecord(id=f"e{epoch}-p0-{i}", epoch=epoch, prompt_index=0, index=i, prompt="a dog", policy_version=epoch,
                        reference="r", base="b", reference_score=0.3, base_score=0.1, reference_image_key="ref.png",
                        base_image_key="base.png", base_trajectory_key="b.pt", target_key="t.pt",
                        target_image_key="target.png", target_score=0.4) for i in range(5)]
    return metrics, steps, pairs


def _log_epochs(tracker: tracking.Tracker | None, epochs: list[int]) -> None:
    assert tracker is not None
    try:
        for e in epochs:
            tracking.log_epoch(tracker, *_epoch(e), read=OBJECTS.__getitem__)
    finally:
        tracker.close()


def _assert_triplet(image: np.ndarray) -> None:
    """reference | base | target, side by side."""
    assert image.shape == (H, 3 * W, 3)
    for k, rgb in enumerate(COLOURS.values()):
        assert (image[:, k * W:(k + 1) * W] == rgb).all()


# --- W&B -----------------------------------------------------------------------------------------
def _wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    [log] = run_dir.glob("run-*.wandb")
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("wandb", reason="report_to='wandb' needs the wandb extra: pip install -e '.[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    for name in ("WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "wandb-dir"


def test_wandb_offline_run_holds_step_and_epoch_curves_and_triplets(wandb_offline: Path, tmp_path: Path) -> None:
    _log_epochs(tracking.make_tracker("wandb", tmp_path / "root", job_id=JOB), [0, 1])
    assert not (tmp_path / "root").exists()  # WANDB_DIR wins over the default folder
    [run_dir] = (wandb_offline / "wandb").glob(f"offline-run-*-{JOB}")
    records = _wandb_records(run_dir)
    [run] = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_id"] == JOB and run["display_name"] == JOB and run["project"] == "dfusion" and run["resume"]
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    train = [(r["train/step"], r["train/loss"], r["train/reward_accuracy"]) for r in rows if "train/step" in r]
    assert train == [(s, pytest.approx(0.5 - 0.1 * s), 0.5) for s in (1, 2, 3, 4)]
    epochs = [r for r in rows if "epoch" in r]
    assert [(r["epoch"], r["epoch/heldout_score"], r["epoch/heldout_score_base"]) for r in epochs] == \
        [(0, pytest.approx(0.2), 0.2), (1, pytest.approx(0.3), 0.2)]
    assert not any(k.startswith(("epoch/policy_version", "epoch/mean_target_gain")) for r in epochs for k in r)
    for r in epochs:  # the first four pairs of each epoch, as PNG files of the run
        paths = {k.removesuffix(".path"): v for k, v in r.items() if k.startswith("pairs/") and k.endswith(".path")}
        assert sorted(paths) == [f"pairs/0_{i}" for i in range(tracking.PAIR_IMAGES)]
        for path in paths.values():
            _assert_triplet(np.asarray(Image.open(run_dir / "files" / path).convert("RGB")))


def test_wandb_run_of_a_resumed_job_keeps_its_id(wandb_offline: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack job opens its run at every epoch: the same id, resume='allow' (offline: a folder each)."""
    _log_epochs(tracking.make_tracker("wandb", tmp_path, job_id=JOB), [0])
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "second"))
    _log_epochs(tracking.make_tracker("wandb", tmp_path, job_id=JOB), [1])
    for folder, epoch in ((wandb_offline, 0), (tmp_path / "second", 1)):
        [run_dir] = (folder / "wandb").glob("offline-run-*")
        records = _wandb_records(run_dir)
        [run] = [r["run"] for r in records if r["type"] == "run"]
        assert run["run_id"] == JOB and run["resume"]
        assert [r["history"]["item"]["epoch"] for r in records
                if r["type"] == "history" and "epoch" in r["history"]["item"]] == [epoch]


# --- MLflow --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default store for the module's tests, each in an experiment of its own (a new store's
    database takes seconds to create)."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def mlflow_client(monkeypatch: pytest.MonkeyPatch, mlflow_root: Path) -> Any:
    pytest.importorskip("mlflow", reason="report_to='mlflow' needs the mlflow extra: pip install -e '.[mlflow]'")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{mlflow_root / 'mlflow.db'}")


def test_mlflow_job_run_holds_curves_and_triplets_across_epochs(mlflow_client: Any, mlflow_root: Path,
                                                                 tmp_path: Path) -> None:
    """Default store: `<root>/mlflow.db`, images under `<root>/mlartifacts/`; each epoch reopens the job's run."""
    _log_epochs(tracking.make_tracker("mlflow", mlflow_root, job_id=JOB), [0])
    _log_epochs(tracking.make_tracker("mlflow", mlflow_root, job_id=JOB), [1])
    client = mlflow_client
    experiment = client.get_experiment_by_name("dfusion")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.tags[tracking.JOB_TAG] == JOB and run.info.run_name == JOB and run.info.status == "FINISHED"
    history = lambda key: [(m.step, m.value) for m in  # noqa: E731
                           sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
    assert history("train/loss") == [(s, pytest.approx(0.5 - 0.1 * s)) for s in (1, 2, 3, 4)]
    assert history("train/grad_norm") == [(s, 1.0) for s in (1, 2, 3, 4)]
    assert history("epoch/heldout_score") == [(0, pytest.approx(0.2)), (1, pytest.approx(0.3))]
    assert history("epoch/target_win_rate") == [(0, 1.0), (1, 1.0)]
    assert "epoch/policy_version" not in run.data.metrics and "epoch/mean_target_gain" not in run.data.metrics
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert sorted(p.split("/")[-1].split("+")[0] + "@" + p.split("+step+")[1].split("+")[0] for p in images) == \
        sorted(f"pairs~0_{i}@{e}" for e in (0, 1) for i in range(tracking.PAIR_IMAGES))
    local = Path(client.download_artifacts(run.info.run_id, images[0], str(tmp_path / "dl")))
    assert str(mlflow_root / "mlartifacts") in run.info.artifact_uri
    _assert_triplet(np.asarray(Image.open(local).convert("RGB")))


def test_mlflow_embedded_runs_are_runs_of_their_own(mlflow_client: Any, mlflow_root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a job id (the embedded runner) every tracker is a new run, named as asked, in the
    experiment MLFLOW_EXPERIMENT_NAME names."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "embedded")
    for name in ("run-a", "run-b"):
        _log_epochs(tracking.make_tracker("mlflow", mlflow_root, name=name), [0])
    client = mlflow_client
    runs = client.search_runs([client.get_experiment_by_name("embedded").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run-a", "run-b"]
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] == [1, 2]


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("report_to", "module", "extra"), [
    ("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlflow"), ("tensorboard", "tensorboard", "tracking"),
])
def test_a_missing_library_names_report_to_and_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         report_to: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec answers None
    with pytest.raises(ConfigError) as err:
        tracking.make_tracker(report_to, tmp_path, job_id=JOB)
    assert err.value.field == "report_to" and f"pip install 'dfusion[{extra}]'" in str(err.value)
    assert f"needs the {module} package" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_a_stack_worker_logs_a_tracking_failure_without_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """The train stage's call: a tracker that cannot start is an error in the log, not a failed job."""
    monkeypatch.setenv("DFUSION_TRACKING_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "wandb", None)
    tracking.report_epoch(OBJECTS.__getitem__, JOB, "wandb", *_epoch(0))
    [record] = [r for r in caplog.records if r.name == "workers.tracking"]
    assert record.levelname == "ERROR" and JOB in record.getMessage() and "dfusion[wandb]" in record.getMessage()
    tracking.report_epoch(OBJECTS.__getitem__, JOB, "none", *_epoch(0))  # 'none': nothing at all
    assert not list(tmp_path.iterdir())
