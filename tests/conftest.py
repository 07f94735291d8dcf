import os

import pytest
import torch

# Two cores: keep intra-op threads bounded so tests behave the same on CI and here.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
