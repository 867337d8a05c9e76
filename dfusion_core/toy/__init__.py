"""A small world where alignment can be measured exactly: scenes of two coloured shapes.

- `world`: captions, scenes, rendering, the train / held-out split and the toy job presets (numpy only).
- `scorer`: `ToyScorer`, the exact scorer, and the masks of the objects as it sees them.
- `model`: the pixel-space toy diffusion model, built untrained or loaded from the shipped weights.
"""
