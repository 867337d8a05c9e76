"""`services` must stay importable without torch: the API process has none (STYLE: layers point one way)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# celery is allowed: services/queue.py configures the app the API enqueues through (no task code)
FORBIDDEN = ("torch", "diffusers", "fastapi", "transformers")


def test_services_import_without_heavy_deps() -> None:
    code = (
        "import sys\n"
        "import services, services.settings, services.storage, services.state, services.state.redis\n"
        "import services.state.memory, services.state.tokens, services.telemetry\n"
        "import services.queue, services.jobspec, services.records\n"
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"services pulled in: {out.stdout.strip()}"


def test_only_settings_reads_environment() -> None:
    for path in (ROOT / "services").rglob("*.py"):
        if path.name != "settings.py":
            assert "os.environ" not in path.read_text().replace("{**os.environ", ""), path.name
