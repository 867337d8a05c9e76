"""D-Fusion as a library: sampling with log-probs, mask-guided self-attention fusion,
pair selection, preference losses and LoRA checkpoints on stock diffusers.

Importing the package itself is cheap (no torch): submodules are imported where used,
so `api/` can share the typed configs without loading torch.
"""

__version__ = "0.1.0"
