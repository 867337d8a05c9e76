import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CASE = Path(__file__).parents[1] / "golden" / "a"
DFUSION = [sys.executable, "-m", "cli.main"]
# A hang guard, not a speed check: one golden check needs ~52 s of CPU and took 77 s niced
# beside a busy CPU job, so 10 minutes fails only a run that is stuck.
TIMEOUT_S = 600


def test_golden_check_passes_on_the_shipped_case():
    proc = subprocess.run([*DFUSION, "golden-check", str(CASE)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["target_latents_max_abs_err"] <= 1e-3 and result["mask_agreement"] >= 0.995


@pytest.mark.parametrize("change", [{"inject_blocks": [0, 1]}, {"inject_steps": [0, 10]}, {"mask_thr": [0.9, 0.9]}])
def test_golden_check_fails_when_the_method_is_changed(tmp_path, change):
    case = tmp_path / "case"
    shutil.copytree(CASE, case)
    settings = json.loads((case / "golden.json").read_text())
    settings.update(change)
    (case / "golden.json").write_text(json.dumps(settings))
    proc = subprocess.run([*DFUSION, "golden-check", str(case)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is False
