"""dfusion compare on the folder of an embedded run (no API): computed in this process by the same
task body, its images kept under FOLDER/compare/, the same side-by-side PNG and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from cli.compare import GAP, LABEL_H, MIN_SIDE
from cli.main import main
from dfusion_core.lora import add_lora, lora_bytes
from dfusion_core.models import build_tiny
from services.jobspec import JobSpec

PROMPT = "a cat eating a sandwich"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `dfusion run` leaves that compare reads: spec.json and checkpoints/<version>/ (a LoRA
    whose B matrices are not zero, so the policy differs from its base)."""
    out = tmp_path_factory.mktemp("run")
    spec = JobSpec.model_validate({"prompts": [{"text": PROMPT, "items": ["cat"], "mask_thresholds": [0.1]}],
                                   "model": "tiny", "samples_per_prompt": 4, "sampling": {"num_steps": 3}})
    (out / "spec.json").write_text(spec.model_dump_json())
    model = build_tiny()
    add_lora(model.unet, rank=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    (out / "checkpoints" / "1").mkdir(parents=True)
    (out / "checkpoints" / "1" / "pytorch_lora_weights.safetensors").write_bytes(lora_bytes(model.unet))
    return out


def test_a_run_folder_is_compared_here(run_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp.png"
    assert main(["compare", str(run_folder), PROMPT, "--seeds", "3,5", "--items", "cat", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out) and "seed 3: base " in printed.err and "seed 5: base " in printed.err
    with Image.open(out) as im:
        assert im.size == (3 * MIN_SIDE + 2 * GAP, 2 * (MIN_SIDE + LABEL_H))
    kept = sorted(p.name for p in (run_folder / "compare").rglob("*.png"))
    assert kept == ["s3.base.png", "s3.mask0.png", "s3.trained.png", "s5.base.png", "s5.mask0.png", "s5.trained.png"]
    base, trained = (Image.open(next((run_folder / "compare").rglob(f"s3.{r}.png"))) for r in ("base", "trained"))
    assert base.tobytes() != trained.tobytes()


@pytest.mark.parametrize(("argv", "error"), [
    (["--version", "5"], "version: unknown version 5; job local has versions 1"),
    (["--seeds", "9"], "seeds: give 1 to 8 seeds, got 9"),
    (["--items", "dog"], "items: item 'dog' is not a word of the prompt"),
], ids=["unknown-version", "too-many-seeds", "item-not-in-prompt"])
def test_bad_input_is_one_line_naming_the_field(run_folder: Path, tmp_path: Path, argv, error, capsys) -> None:
    assert main(["compare", str(run_folder), PROMPT, *argv, "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == f"dfusion compare: error: {error}"
    assert not (tmp_path / "x.png").exists()
