"""dfusion compare against the local stack, in-process: a side-by-side PNG of the shared tiny job's
trained policy and its base, and one-line errors naming what was wrong."""

from __future__ import annotations

import pytest
from PIL import Image

from cli.compare import GAP, LABEL_H, MIN_SIDE
from cli.main import main

pytestmark = pytest.mark.integration


def test_compare_writes_a_side_by_side_png(api_env, tiny_job, tmp_path, capsys):
    out = tmp_path / "cmp" / "compare.png"
    argv = ["compare", tiny_job.id, "a cat eating a sandwich", "--seeds", "2", "--items", "cat", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out)
    assert "seed 0: base " in printed.err and "seed 1: base " in printed.err and "mean score: base " in printed.err
    with Image.open(out) as im:  # 2 seeds x (base | trained | the mask of "cat"), 64 px images drawn at 128
        assert im.size == (3 * MIN_SIDE + 2 * GAP, 2 * (MIN_SIDE + LABEL_H))


@pytest.mark.parametrize(("argv", "error"), [
    (["--version", "9"], "rejected: version: unknown version 9"),
    (["--seeds", "9"], "rejected: seeds: Value error, give 1 to 8 seeds, got 9"),
    (["--items", "dog"], "rejected: items: Value error, item 'dog' is not a word of the prompt"),
], ids=["unknown-version", "too-many-seeds", "item-not-in-prompt"])
def test_bad_input_is_one_line_naming_the_field(api_env, tiny_job, tmp_path, argv, error, capsys):
    assert main(["compare", tiny_job.id, "a cat eating a sandwich", *argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dfusion compare: error: compare for job {tiny_job.id} {error}"), err
    assert not (tmp_path / "x.png").exists()


def test_an_unknown_job_is_one_line(api_env, capsys):
    assert main(["compare", "nope", "a cat"]) == 2
    assert capsys.readouterr().err.strip() == ("dfusion compare: error: compare for job nope not found "
                                               "(or it belongs to another tenant)")
