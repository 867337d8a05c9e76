"""Third-party console noise that says nothing to a dfusion user, filtered at its logger.

transformers warns once per image-processor class that torchvision is missing and it falls back
to the PIL processor. diffusers' pipelines import those classes (the safety checker's feature
extractor), and dfusion never runs them: the scorers preprocess images themselves. torchvision is
left out on purpose (DESIGN: on the CPU machines PyPI's torchvision forces a CUDA torch), so the
warning would greet every `dfusion demo`, `dfusion run` and worker start. Only that message is
dropped; every other transformers warning still shows.
"""

from __future__ import annotations

import logging

_TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _TORCHVISION_FALLBACK not in record.getMessage()


def quiet_third_party() -> None:
    """Install the filter (idempotent); call before transformers is imported."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())
