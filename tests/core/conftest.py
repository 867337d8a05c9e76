import pytest

from dfusion_core.config import SamplingConfig
from dfusion_core.models import build_tiny


@pytest.fixture(scope="session")
def tiny():
    return build_tiny()


@pytest.fixture
def fast_sampling():
    return SamplingConfig(num_steps=4, guidance_scale=5.0, eta=1.0, batch_size=8)
