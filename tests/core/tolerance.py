"""Equal up to float32 rounding, for comparing the same math run in another batch shape or kernel.

Float32 keeps ~7 significant digits (eps 1.2e-7). The same math run with another batch shape or
attention kernel rounds differently: measured up to 1.5e-6 of the largest |value| (UNet output,
or latents after 4 steps whose guidance w=5 amplifies eps differences), e.g. 2.7e-5 at |x| = 17.
Other CPUs change which roundings happen, not how many, so 1e-5 of the scale leaves ~7x headroom
while staying ~90x below what fusion really changes (max |fused - base| ~ 1e-3 of the scale).
"""

import torch

FLOAT_NOISE = 1e-5


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = FLOAT_NOISE) -> None:
    """Equal up to float rounding: max |actual - expected| <= rel * max |expected|."""
    err, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x scale {scale:.3g}"
