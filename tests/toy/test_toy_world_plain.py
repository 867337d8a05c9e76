"""scripts/toy_world_plain.py: a script run under it sees the first pattern world (plain in dotted's
place), which the scorer reads exactly; the shipped world in this process is untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dfusion_core.toy import scorer as ts
from dfusion_core.toy import world as tw

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json
import numpy as np
from dfusion_core.toy import scorer as ts, world as tw
rng = np.random.default_rng(2)
images = tw.make_batch(list(tw.CAPTIONS), rng)
plain = tw.render(tw.sample_scene("a red plain square above a blue striped square", rng))
print(json.dumps({
    "patterns": list(tw.PATTERNS),
    "facts": float(np.mean([ts.caption_facts(im, c) for im, c in zip(images, tw.CAPTIONS)])),
    "read": [ts.segment(plain)[c].pattern for c in ("red", "blue")],
    "captions": len(tw.CAPTIONS),
}))
"""


def test_plain_takes_dotted_s_place_and_is_read_exactly(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "toy_world_plain.py"), str(script)],
                         capture_output=True, text=True, cwd=ROOT, check=True, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["patterns"] == ["plain", "striped", "checked"] and got["captions"] == len(tw.CAPTIONS)
    assert got["facts"] == 1.0  # every fact of a clean render of every caption holds
    assert got["read"] == ["plain", "striped"]
    # this process's world is the shipped one
    assert "plain" not in tw.PATTERNS and ts.PLAIN_BELOW < 0.2
