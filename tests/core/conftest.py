import pytest
import torch

from dfusion_core.config import SamplingConfig
from dfusion_core.models import build_tiny


@pytest.fixture(scope="session")
def tiny():
    return build_tiny()


@pytest.fixture
def fast_sampling():
    return SamplingConfig(num_steps=4, guidance_scale=5.0, eta=1.0, batch_size=8)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    models gain nothing from threads, which only add contention on small CI boxes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
