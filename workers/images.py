"""PNG bytes for images and masks (deterministic encoder settings, so reruns write identical bytes)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def png_bytes(image: torch.Tensor) -> bytes:
    """uint8 [H, W, 3] or [H, W] -> PNG."""
    buf = io.BytesIO()
    Image.fromarray(image.cpu().numpy()).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def png_tensor(data: bytes) -> torch.Tensor:
    """PNG -> uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.array(im.convert("RGB")))


def mask_image(masks: torch.Tensor, resolution: int, size: tuple[int, int]) -> torch.Tensor:
    """The union over items of the last step's binary masks [T, R*R, items] as a uint8 [H, W] picture."""
    union = masks[-1].amax(dim=-1).view(1, 1, resolution, -1).float()
    up = torch.nn.functional.interpolate(union, size=size, mode="nearest")[0, 0]
    return (up * 255).to(torch.uint8)
