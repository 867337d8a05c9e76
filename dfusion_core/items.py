"""Item words -> token positions, with the model's own tokenizer.

The authors took word indices and added 1 for the start token, which assumes one token per
word: "woolen" is two BPE tokens ("woo", "len"), so their mask read the wrong token. Here an
item is a word (or several words) of the prompt, mapped to every token it spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import CLIPTokenizer

from dfusion_core.errors import ConfigError, ItemError

_WORD_END = "</w>"


@dataclass(frozen=True)
class ItemTokens:
    """An item word and the token indices [in the padded id sequence, BOS = 0] it covers."""

    word: str
    positions: tuple[int, ...]
    threshold: float


def _words(tokenizer: CLIPTokenizer, text: str) -> list[tuple[str, list[int]]]:
    """The prompt's words as the tokenizer splits them, each with its token positions (BOS = 0)."""
    words: list[tuple[str, list[int]]] = []
    pieces, positions = [], []
    for pos, token in enumerate(tokenizer.tokenize(text), start=1):
        pieces.append(token)
        positions.append(pos)
        if token.endswith(_WORD_END):
            words.append(("".join(pieces)[: -len(_WORD_END)], positions))
            pieces, positions = [], []
    if pieces:
        words.append(("".join(pieces), positions))
    return words


def _normalise(tokenizer: CLIPTokenizer, word: str) -> list[str]:
    return [w for w, _ in _words(tokenizer, word)]


def map_items(
    tokenizer: CLIPTokenizer, text: str, items: Sequence[str], thresholds: Sequence[float]
) -> list[ItemTokens]:
    """Map each item to all token positions of every occurrence of it in `text`."""
    if not text or not text.strip():
        raise ConfigError("text", "the prompt is empty")
    if len(items) != len(thresholds):
        raise ConfigError(
            "mask_thresholds", f"{len(thresholds)} thresholds for {len(items)} items; give one threshold per item"
        )
    words = _words(tokenizer, text)
    context = int(tokenizer.model_max_length) - 1  # the last slot holds the end token
    out = []
    for item, thr in zip(items, thresholds, strict=True):
        if not 0.0 <= float(thr) <= 1.0:
            raise ConfigError("mask_thresholds", f"threshold {thr} for {item!r} is outside [0, 1]")
        target = _normalise(tokenizer, item)
        if not target:
            raise ItemError("items", f"item {item!r} has no word in it")
        positions: list[int] = []
        for start in range(len(words) - len(target) + 1):
            if [w for w, _ in words[start : start + len(target)]] == target:
                positions += [p for _, ps in words[start : start + len(target)] for p in ps]
        if not positions:
            raise ItemError("items", f"item {item!r} is not a word of the prompt {text!r}")
        if max(positions) >= context:
            raise ItemError(
                "items",
                f"item {item!r} lies beyond the text encoder's {context}-token context window "
                f"(token {max(positions)}); shorten the prompt",
            )
        out.append(ItemTokens(item, tuple(positions), float(thr)))
    return out
