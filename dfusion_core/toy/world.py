"""A small world where alignment can be measured exactly: scenes of two coloured shapes.

- Data: `render` draws a `Scene` (two objects, each a colour, a shape, a centre and a size) as
  uint8 [S, S, 3] on black; `sample_scene` places the objects of a caption such as
  "a red circle above a blue square" (an attribute binding per object and a spatial relation,
  the analogues of the paper's templates). `CAPTIONS` holds every caption of the world (two
  distinct colours, two distinct shapes, four relations); `heldout_captions()` is a fixed split
  of combinations never shown in training, `train_captions()` the rest.
- Scorer: `ToyScorer` reads colours, shapes and the relation back from pixels and returns the
  fraction of the caption's five facts that hold (colour of A present, A's shape, colour of B
  present, B's shape, the relation between them): 1.0 for a faithful render, in [0, 1] always.
  Registered as the `toy` scorer.
- Model: pixel-space diffusion (a `UNet2DConditionModel` on the 32x32x3 image folded space-to-depth
  into 12x16x16, a small `CLIPTextModel` on the shipped CLIP BPE) behind `PixelVAE`, an exact
  weightless "autoencoder" (pixel_unshuffle / pixel_shuffle), so the rest of dfusion, which decodes
  latents through `model.vae`, needs no change. `build_toy`
  gives untrained weights from the configs; `load_toy` reads the shipped, trained weights
  (assets/toy/*.safetensors, stored in fp16), trained by scripts/train_toy.py.

All randomness comes from an explicit `numpy.random.Generator`; nothing is seeded globally.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig, CLIPTextModel

from dfusion_core.errors import ConfigError
from dfusion_core.models import SD_SCHEDULER_CONFIG, DiffusionModel, _assemble, load_tokenizer
from dfusion_core.scoring import register_scorer

TOY = "toy"
IMAGE_SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 240),
    "yellow": (240, 220, 40),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")
MIN_HALF, MAX_HALF = 4, 6  # object half-extent in pixels (objects 9..13 px across)
HELDOUT_MOD = 7  # one caption in about seven is held out (a fixed hash split)

#: Fusion settings for the toy model (FusionConfig fields), measured by bench/fusion_quality.py
#: (bench/RESULTS.md). Its item probabilities are low and flat (~0.01-0.03 against the uniform
#: 1/77), so an absolute threshold covers the image or nothing: each item's 8x8 map keeps its own
#: top 30 % of cells instead (quantile 0.7: ~38 % of the image in the union, IoU with the true
#: objects ~0.46 against ~0.31 for a full mask; minmax at 0.3 covered ~85 %, barely better than
#: full). Self-attention is a weak path in this small UNet, so every attention block fuses.
#: Skipping 1 of 10 steps is the authors' 2 of 20.
TOY_FUSION: dict = {"mask_resolution": 8, "mask_mode": "quantile", "mask_level": 0.7, "blocks": (0, 6),
                    "skip_first_steps": 1}

#: Training settings for toy jobs (TrainingConfig fields): a fixed step budget of 4-pair
#: minibatches, the last two denoising steps left out (their log-ratios dwarf the others'), and the
#: learning rate bench/alignment.py's search on validation captions chose for D-Fusion pairs
#: (bench/RESULTS.md; plain pairs chose 1e-3).
TOY_TRAINING: dict = {"learning_rate": 3e-4, "batch_pairs": 4, "steps_per_epoch": 6, "skip_last_steps": 2}

_CAPTION = re.compile(
    r"^an? (?P<c1>\w+) (?P<s1>\w+) (?P<rel>above|below|left of|right of) an? (?P<c2>\w+) (?P<s2>\w+)$"
)


# -- data -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Obj:
    """One shape: its colour and shape words, centre (cx, cy) in pixels and half-extent."""

    colour: str
    shape: str
    cx: int
    cy: int
    half: int


@dataclass(frozen=True)
class Caption:
    """A parsed caption: object A, the relation of A to B, object B (colours and shapes differ)."""

    colour_a: str
    shape_a: str
    relation: str
    colour_b: str
    shape_b: str

    @property
    def text(self) -> str:
        return f"a {self.colour_a} {self.shape_a} {self.relation} a {self.colour_b} {self.shape_b}"

    @property
    def items(self) -> list[str]:
        """The item words D-Fusion masks on: the two shape nouns."""
        return [self.shape_a, self.shape_b]


@dataclass(frozen=True)
class Scene:
    caption: Caption
    objects: tuple[Obj, Obj]


def parse_caption(text: str) -> Caption:
    """'a red circle above a blue square' -> Caption; ConfigError for text outside the world."""
    m = _CAPTION.match(text.strip().lower())
    if not m:
        raise ConfigError("prompt", f"{text!r} is not a toy-world caption ('a red circle above a blue square')")
    c = Caption(m["c1"], m["s1"], m["rel"], m["c2"], m["s2"])
    for colour in (c.colour_a, c.colour_b):
        if colour not in COLOURS:
            raise ConfigError("prompt", f"unknown colour {colour!r} in {text!r}; the world has {list(COLOURS)}")
    for shape in (c.shape_a, c.shape_b):
        if shape not in SHAPES:
            raise ConfigError("prompt", f"unknown shape {shape!r} in {text!r}; the world has {list(SHAPES)}")
    if c.colour_a == c.colour_b or c.shape_a == c.shape_b:
        raise ConfigError("prompt", f"{text!r}: the two objects need different colours and shapes")
    return c


def _all_captions() -> tuple[str, ...]:
    out = []
    for ca in COLOURS:
        for sa in SHAPES:
            for rel in RELATIONS:
                for cb in COLOURS:
                    for sb in SHAPES:
                        if ca != cb and sa != sb:
                            out.append(Caption(ca, sa, rel, cb, sb).text)
    return tuple(out)


CAPTIONS: tuple[str, ...] = _all_captions()  # 288 captions


def is_heldout(text: str) -> bool:
    """The fixed held-out split: a hash of the caption, so it never depends on list order."""
    digest = hashlib.sha256(f"dfusion.toy:{text}".encode()).digest()
    return digest[0] % HELDOUT_MOD == 0


def heldout_captions() -> list[str]:
    return [c for c in CAPTIONS if is_heldout(c)]


def train_captions() -> list[str]:
    return [c for c in CAPTIONS if not is_heldout(c)]


def shape_mask(shape: str, cx: int, cy: int, half: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask: a filled square, disc or upward triangle (bounding box 2*half+1)."""
    y, x = np.mgrid[0:size, 0:size]
    dx, dy = x - cx, y - cy
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "circle":
        return dx * dx + dy * dy <= (half + 0.5) ** 2
    if shape == "triangle":  # apex at the top, base at the bottom: half-width grows linearly
        frac = (dy + half) / (2 * half)
        return (np.abs(dy) <= half) & (np.abs(dx) <= frac * half + 0.5)
    raise ConfigError("shape", f"unknown shape {shape!r}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: the objects drawn in order on black."""
    img = np.zeros((size, size, 3), np.uint8)
    for o in scene.objects:
        img[shape_mask(o.shape, o.cx, o.cy, o.half, size)] = COLOURS[o.colour]
    return img


def sample_scene(caption: str | Caption, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
    """Place the caption's objects: A in the half of the image its relation names, B in the other."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    halves = rng.integers(MIN_HALF, MAX_HALF + 1, size=2)
    mid = size // 2
    centres = []
    for k, h in enumerate(halves):
        h = int(h)
        first = (k == 0) == (c.relation in ("above", "left of"))  # this object in the top / left half
        lo, hi = (h, mid - 1 - h) if first else (mid + h, size - 1 - h)
        along = int(rng.integers(lo, hi + 1))
        across = int(rng.integers(h, size - h))
        centres.append((across, along) if c.relation in ("above", "below") else (along, across))
    a = Obj(c.colour_a, c.shape_a, centres[0][0], centres[0][1], int(halves[0]))
    b = Obj(c.colour_b, c.shape_b, centres[1][0], centres[1][1], int(halves[1]))
    return Scene(c, (a, b))


def make_batch(
    captions: Sequence[str], rng: np.random.Generator, size: int = IMAGE_SIZE
) -> np.ndarray:
    """uint8 [B, size, size, 3]: one fresh scene per caption."""
    return np.stack([render(sample_scene(c, rng, size), size) for c in captions])


# -- scorer ---------------------------------------------------------------------------------
_PALETTE = np.array([(0, 0, 0), *COLOURS.values()], np.float32)  # index 0 = background
_NAMES = ("background", *COLOURS)
MIN_AREA = 12  # pixels a colour needs to count as an object (a 9x9 triangle has about 45)
SQUARE_FILL, TRIANGLE_FILL = 0.93, 0.7  # fill ratio of the bounding box: square 1, disc 0.80-0.85, triangle 0.57-0.61
RELATION_MARGIN = 2.0  # pixels between centroids for a relation to hold


@dataclass(frozen=True)
class Region:
    """The largest 4-connected blob of one colour: area, centroid (x, y), bounding-box fill ratio."""

    area: int
    cx: float
    cy: float
    fill: float

    @property
    def shape(self) -> str:
        if self.fill >= SQUARE_FILL:
            return "square"
        return "circle" if self.fill >= TRIANGLE_FILL else "triangle"


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (iterative min-label propagation)."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(h * w).reshape(h, w), big)
    while True:
        prev = labels
        padded = np.pad(labels, 1, constant_values=big)
        neigh = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1],
                                   padded[1:-1, :-2], padded[1:-1, 2:]])
        labels = np.where(mask, neigh, big)
        if np.array_equal(labels, prev):
            break
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[np.argmax(counts)]


def _nearest_palette(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int [H, W]: each pixel's nearest palette entry (0 = background)."""
    return ((image.astype(np.float32)[:, :, None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)


def segment(image: np.ndarray) -> dict[str, Region]:
    """uint8 [H, W, 3] -> the colours present (largest blob of >= MIN_AREA pixels each)."""
    nearest = _nearest_palette(image)
    out: dict[str, Region] = {}
    for k in range(1, len(_NAMES)):
        mask = nearest == k
        if mask.sum() < MIN_AREA:
            continue
        blob = _largest_component(mask)
        area = int(blob.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(blob)
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        out[_NAMES[k]] = Region(area, float(xs.mean()), float(ys.mean()), area / float(box))
    return out


def object_masks(image: np.ndarray, caption: str | Caption) -> np.ndarray:
    """Boolean [2, H, W]: where the caption's two objects are in an image, as the scorer sees them
    (the largest blob of each object's colour; all False when the colour is absent). The ground
    truth that item masks are measured against."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    nearest = _nearest_palette(image)
    out = np.zeros((2, *image.shape[:2]), bool)
    for k, colour in enumerate((c.colour_a, c.colour_b)):
        mask = nearest == _NAMES.index(colour)
        if mask.sum() >= MIN_AREA:
            out[k] = _largest_component(mask)
    return out


def mask_iou(item_masks: torch.Tensor, resolution: int, truth: np.ndarray) -> float:
    """IoU of a fusion mask with the truth: the union of item masks [R*R, items] on the RxR grid,
    nearest-upsampled to the image, against boolean `truth` [S, S] (e.g. `object_masks(...).any(0)`)."""
    union = item_masks.amax(-1).reshape(resolution, resolution).cpu().numpy() > 0
    up = np.kron(union, np.ones((truth.shape[0] // resolution, truth.shape[1] // resolution), bool))
    inter, either = (up & truth).sum(), (up | truth).sum()
    return float(inter / either) if either else 1.0


def relation_holds(relation: str, a: Region, b: Region, margin: float = RELATION_MARGIN) -> bool:
    if relation == "above":
        return a.cy < b.cy - margin
    if relation == "below":
        return a.cy > b.cy + margin
    if relation == "left of":
        return a.cx < b.cx - margin
    if relation == "right of":
        return a.cx > b.cx + margin
    raise ConfigError("relation", f"unknown relation {relation!r}")


def caption_facts(image: np.ndarray, caption: str | Caption) -> list[bool]:
    """The caption's five facts read from the image: A's colour, A's shape, B's colour, B's shape, relation."""
    c = parse_caption(caption) if isinstance(caption, str) else caption
    regions = segment(image)
    a, b = regions.get(c.colour_a), regions.get(c.colour_b)
    return [
        a is not None,
        a is not None and a.shape == c.shape_a,
        b is not None,
        b is not None and b.shape == c.shape_b,
        a is not None and b is not None and relation_holds(c.relation, a, b),
    ]


class ToyScorer:
    """Exact alignment for the toy world: the fraction of the caption's five facts the pixels satisfy."""

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ConfigError("images", f"expected uint8 [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ConfigError("prompts", f"{len(prompts)} prompts for {images.shape[0]} images")
        arr = images.cpu().numpy()
        return torch.tensor([float(np.mean(caption_facts(img, p))) for img, p in zip(arr, prompts, strict=True)],
                            dtype=torch.float32)


@register_scorer(TOY)
def build_toy_scorer(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> ToyScorer:
    """The exact toy-world scorer (pure numpy on the CPU; device and dtype are ignored)."""
    return ToyScorer()


# -- model ----------------------------------------------------------------------------------
class PixelVAE(ModelMixin, ConfigMixin):
    """An exact, weightless "autoencoder": space-to-depth by `factor` (pixel_unshuffle).

    Latents [B, 3*f*f, S/f, S/f] are the image in [-1, 1], rearranged; decode is pixel_shuffle,
    so the model is pixel-space diffusion at 1/f the spatial cost. Provides what dfusion reads
    from `model.vae`: `config.scaling_factor`, `config.block_out_channels` (its length gives the
    scale factor f = 2**(len-1)), `decode(z).sample`, and `encode(x)` for data.
    """

    @register_to_config
    def __init__(self, factor: int = 2, scaling_factor: float = 1.0, block_out_channels: tuple[int, ...] = (12, 12)):
        super().__init__()
        if 2 ** (len(block_out_channels) - 1) != factor:
            raise ConfigError("vae", f"block_out_channels {block_out_channels} do not give the factor {factor}")
        # one frozen scalar so .to(device/dtype) and next(parameters()) behave as for any module
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    @dataclass
    class Output:
        sample: torch.Tensor

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [-1, 1] -> latents [B, 3*f*f, S/f, S/f]."""
        return torch.nn.functional.pixel_unshuffle(x, self.config.factor)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> Any:
        x = torch.nn.functional.pixel_shuffle(z, self.config.factor)
        return PixelVAE.Output(x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> Any:
        return self.decode(self.encode_pixels(x))


LATENT_FACTOR = 2
LATENT_CHANNELS = 3 * LATENT_FACTOR**2

TOY_UNET_CONFIG: dict = {
    "sample_size": IMAGE_SIZE // LATENT_FACTOR,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "layers_per_block": 1,
    "block_out_channels": [48, 96, 96],
    # attention at every level, 16x16 included: that is where layout and objects live, so the
    # cross-attention maps can find the items and self-attention fusion can move them
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
}

TOY_TEXT_CONFIG: dict = {
    "vocab_size": 49408,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


def toy_dir() -> Path:
    return Path(str(resources.files("dfusion_core") / "assets" / "toy"))


def build_toy_modules(seed: int = 0) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Untrained UNet and text encoder from the configs under `seed` (forked RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TOY_UNET_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**TOY_TEXT_CONFIG))
    return unet, text


def assemble_toy(
    unet: UNet2DConditionModel, text: CLIPTextModel, device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32, name: str = TOY,
) -> DiffusionModel:
    vae: Any = PixelVAE(factor=LATENT_FACTOR, block_out_channels=(LATENT_CHANNELS,) * (LATENT_FACTOR.bit_length()))
    return _assemble(unet, vae, text, load_tokenizer(), DDIMScheduler(**SD_SCHEDULER_CONFIG), name, device, dtype)


def build_toy(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> DiffusionModel:
    """The toy architecture with untrained weights (the 'no training at all' baseline)."""
    unet, text = build_toy_modules(seed)
    return assemble_toy(unet, text, device, dtype, name=f"{TOY}-untrained")


def save_toy_weights(unet: torch.nn.Module, text: torch.nn.Module, folder: str | Path, meta: dict | None = None) -> None:
    """unet.safetensors + text_encoder.safetensors (fp16) + meta.json in `folder`."""
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("text_encoder", text)):
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(root / f"{name}.safetensors"))
    (root / "meta.json").write_text(json.dumps(meta or {}, indent=2))


def load_toy_modules(
    folder: str | Path | None = None, strict: bool = True
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Toy weights from `folder` (default: the shipped ones). `strict=False` lets weights of a smaller
    architecture seed a grown one (its extra layers keep their fresh init), as scripts/train_toy.py --init does."""
    from safetensors.torch import load_file

    root = Path(folder) if folder is not None else toy_dir()
    if not (root / "unet.safetensors").is_file():
        raise ConfigError("model", f"no toy weights in {root} (train them with scripts/train_toy.py)")
    unet, text = build_toy_modules()
    for name, module in (("unet", unet), ("text_encoder", text)):
        state = {k: v.float() for k, v in load_file(str(root / f"{name}.safetensors")).items()}
        module.load_state_dict(state, strict=strict)
    return unet, text


def load_toy(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, folder: str | Path | None = None
) -> DiffusionModel:
    """The trained toy model (default: the weights shipped in assets/toy)."""
    unet, text = load_toy_modules(folder)
    return assemble_toy(unet, text, device, dtype)
