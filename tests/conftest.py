import pytest
import torch

# Tiny tensors: one intra-op thread is as fast and does not fight the DDP test's two processes.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
