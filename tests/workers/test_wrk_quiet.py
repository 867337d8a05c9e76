"""A worker start or an embedded run says nothing of torchvision: transformers' fallback warning is
filtered at its logger (dfusion_core/quiet.py), and only that one."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_worker_imports_print_no_third_party_warning():
    code = "import workers.celery_app, workers.embedded; from diffusers import StableDiffusionPipeline"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torchvision" not in out.stderr and "[transformers]" not in out.stderr, out.stderr


def test_only_the_torchvision_fallback_is_dropped():
    from dfusion_core.quiet import quiet_third_party

    quiet_third_party()
    quiet_third_party()  # idempotent: one filter
    logger = logging.getLogger("transformers.utils.import_utils")
    assert len(logger.filters) == 1
    keep = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "something else went wrong", None, None)
    drop = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "`CLIPImageProcessor` requires torchvision "
                             "(not installed); falling back to `CLIPImageProcessorPil`", None, None)
    assert logger.filter(keep) and not logger.filter(drop)


def test_a_root_worker_gets_one_line_of_ours_not_celerys_security_warning():
    """Celery warns in nine lines when a worker runs as root (sandboxes, CI); workers.telemetry drops
    that one warning and logs a line of its own instead."""
    code = ("import warnings, workers.celery_app\n"
            "from celery.exceptions import SecurityWarning\n"
            "warnings.warn_explicit(\"You're running the worker with superuser privileges: this is\", SecurityWarning,"
            " 'platforms.py', 1, module='celery.platforms')\n"
            "warnings.warn_explicit('another celery warning', SecurityWarning, 'platforms.py', 2, module='celery.platforms')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "superuser" not in out.stderr and "another celery warning" in out.stderr
