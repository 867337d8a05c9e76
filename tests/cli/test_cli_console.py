"""The console of `dfusion run` / `dfusion demo`: progress per stage (plain lines off a terminal),
the demo's summary in words before its final JSON line."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cli.demo import summary_lines
from cli.progress import PlainProgress, progress_line, stage_progress
from cli.run import finish

TOTALS = {"samples": 16, "scored": 16, "pairs": 8, "trained_steps": 0}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_when_a_stage_finishes_and_otherwise_seldom() -> None:
    out, clock = io.StringIO(), _Clock()
    plain = PlainProgress(out, every_s=10, clock=clock)
    plain({"samples": 4}, TOTALS)  # the first line
    clock.now = 1
    plain({"samples": 8}, TOTALS)  # too soon
    plain({"samples": 16}, TOTALS)  # samples done
    clock.now = 2
    plain({"samples": 16, "scored": 4}, TOTALS)  # too soon, nothing new done
    clock.now = 12.5
    plain({"samples": 16, "scored": 8}, TOTALS)  # 10 s since the last line
    lines = out.getvalue().splitlines()
    assert lines == [progress_line(c, TOTALS) for c in ({"samples": 4}, {"samples": 16}, {"samples": 16, "scored": 8})]
    assert lines[1] == "progress: samples 16/16 · scored 0/16 · pairs 0/8 · trained steps 0"


def test_off_a_terminal_plain_lines_and_none_when_disabled() -> None:
    with stage_progress(enabled=True, stream=io.StringIO()) as progress:
        assert isinstance(progress, PlainProgress)
    with stage_progress(enabled=False) as progress:
        assert progress is None


def _epoch(e: int, low: float, high: float) -> dict:
    return {"epoch": e, "policy_version": e + 1, "pairs_total": 8, "mean_target_gain": 0.05, "pairs_trained": 4,
            "optimizer_steps": 3, "pair_passes": 2.5 + e, "reward_accuracy": 0.5 + e / 2,
            "eval_score_base": 0.40, "eval_score": 0.43, "eval_diff_ci_low": low, "eval_diff_ci_high": high,
            "eval_samples": 32, "heldout_score_base": 0.41, "heldout_score": 0.42}


def test_demo_summary_says_what_improved_by_how_much_and_where_the_report_is() -> None:
    summary = {"status": "succeeded", "metrics": [_epoch(0, -0.01, 0.02), _epoch(1, 0.01, 0.05)]}
    lines = summary_lines(summary, Path("demo-run"))
    text = "\n".join(lines)
    assert lines[0] == "dfusion demo: 2 epoch(s) trained"
    assert "16 pairs; fused targets scored +0.0500 above their bases" in text
    # 10 + 14 visits of 8 kept pairs; the steps' reward accuracy averaged over the epochs
    assert "training: 8 of 16 pairs kept, 6 optimizer steps, 3.0 passes over them, reward accuracy 0.75" in text
    assert ("own captions, fresh noise: 0.4000 untrained -> 0.4300 trained (+0.0300, 95 % CI +0.0100 to +0.0500, "
            "32 paired samples): improved") in text
    assert "held-out captions, same noise: 0.4100 untrained -> 0.4200 trained (+0.0100)" in text
    assert lines[-1] == "  report: demo-run/report.html (pairs, charts); LoRA: demo-run/checkpoints/2"
    unclear = summary_lines({"status": "succeeded", "metrics": [_epoch(0, -0.01, 0.02)]}, Path("d"))
    assert unclear[3].endswith("no clear change (the CI includes 0)")
    assert summary_lines({"status": "failed", "metrics": [], "error": "boom"}, Path("d")) == [
        "dfusion demo: failed: boom"]


def test_the_json_line_comes_last_with_its_keys(capsys) -> None:
    summary = {"status": "succeeded", "out": "d", "counts": {}, "metrics": [], "error": None}
    assert finish(summary) == 0 and finish({**summary, "status": "failed"}) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]).keys() == summary.keys()


def test_log_lines_go_above_the_bars_while_they_are_drawn() -> None:
    import logging
    import sys

    from cli.progress import _logs_above_bars

    stream, handler = io.StringIO(), logging.StreamHandler(io.StringIO())
    handler.setStream(stream)
    logging.getLogger().addHandler(handler)
    try:
        with _logs_above_bars(stream):
            assert handler.stream is sys.stderr  # rich's stand-in while the bars are live
        assert handler.stream is stream
    finally:
        logging.getLogger().removeHandler(handler)
