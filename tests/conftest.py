import pytest
import torch

# Tiny tensors: one intra-op thread is as fast and does not fight the DDP test's two processes.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


def train_tiny_grf_run(root, conditioning: str = "none", n_train: int = 24, n_test: int = 6, seed: int = 2,
                       terminal_fraction: float = 0.0):
    """A one-epoch run of 8/16-channel U-Net on a 16x32 Matérn-GRF file in `root` (grf.nc, run/)."""
    from fieldpaint.config import from_dict
    from fieldpaint.data.grf import generate_grf
    from fieldpaint.data.io import write_dataset
    from fieldpaint.train import train

    channels, split, attrs = generate_grf(n_train, n_test, 16, 32, channels=1, nu=1.5, length_scale=4.0, seed=seed)
    write_dataset(root / "grf.nc", channels, split, attrs)
    config = from_dict({
        "data": {"path": str(root / "grf.nc"), "variables": ["field"], "height": 16, "width": 32},
        "model": {"channels": [8, 16], "norm_groups": 4, "attention_heads": 2, "conditioning": conditioning},
        "diffusion": {"timesteps": 50, "terminal_fraction": terminal_fraction},
        "train": {"epochs": 1, "batch_size": 8, "ema_warmup_steps": 5, "eval_train_samples": 8},
    })
    train(config, root / "run", progress=False)
    return root
