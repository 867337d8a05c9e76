"""scripts/toy_world_backdrop.py: a script run under it sees scenes on random dark backdrops that the
unchanged scorer still reads exactly; the shipped world in this process is untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from dfusion_core.toy import scorer as ts
from dfusion_core.toy import world as tw

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import numpy as np
from dfusion_core.toy import scorer as ts, world as tw
rng = np.random.default_rng(int(sys.argv[1]))
captions = [tw.CAPTIONS[i] for i in range(0, len(tw.CAPTIONS), 9)]
images = tw.make_batch(captions, rng)
objects = np.stack([ts.object_masks(im, c).any(0) for im, c in zip(images, captions)])
background = images[~objects].reshape(-1, 3)
print(json.dumps({
    "facts": float(np.mean([ts.caption_facts(im, c) for im, c in zip(images, captions)])),
    "lit_background": float((background.max(-1) > 0).mean()),
    "background_max": int(background.max()),
    "distinct_backdrops": len({tuple(im[~m].reshape(-1, 3).mean(0).round(1)) for im, m in zip(images, objects)}),
    "count": len(captions),
}))
"""


def test_scenes_get_random_dark_backdrops_the_scorer_reads_as_background(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "toy_world_backdrop.py"), str(script), "3"],
                         capture_output=True, text=True, cwd=ROOT, check=True, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["facts"] == 1.0  # every fact of every clean render still holds
    assert got["lit_background"] > 0.9  # the backdrop is drawn (a gradient can touch black at one end)
    assert 0 < got["background_max"] <= 32  # and stays dark: nearer black than any object colour
    assert got["distinct_backdrops"] == got["count"]  # each scene its own, from the noise

    # this process's world is the shipped one: black around the objects
    rng = np.random.default_rng(3)
    image = tw.render(tw.sample_scene(tw.CAPTIONS[0], rng))
    assert image[~ts.object_masks(image, tw.CAPTIONS[0]).any(0)].max() == 0
