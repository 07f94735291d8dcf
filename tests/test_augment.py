"""Training augmentation with the data's declared symmetries (train.augment: symmetries)."""

import json

import numpy as np
import pytest
import torch

from fieldpaint.data.symmetry import data_symmetries, in_random_frames, kolmogorov_symmetries
from fieldpaint.errors import ConfigError

H, W = 16, 32
MEAN, STD = (0.5, -0.2, 0.1), (2.0, 1.5, 3.0)  # non-zero means: a sign flip is not z -> -z


def kolmogorov_images(x: np.ndarray) -> list[np.ndarray]:
    """Closed form of the box's four symmetries (k_f = 4, a shift of H/8 rows) on physical (N, 3, H, W)
    fields (u, v, ω), by index arithmetic: the identity; (i, j) -> (-i, -j) with u, v -> -u, -v;
    (i, j) -> (i + H/8, -j) with u, ω -> -u, -ω; (i, j) -> (H/8 - i, j) with v, ω -> -v, -ω."""
    i, j = np.arange(H)[:, None], np.arange(W)[None, :]
    q = H // 8
    signs = [(1, 1, 1), (-1, -1, 1), (-1, 1, -1), (1, -1, -1)]
    rows = [i + 0 * j, (-i) % H + 0 * j, (i + q) % H + 0 * j, (q - i) % H + 0 * j]
    cols = [j + 0 * i, (-j) % W + 0 * i, (-j) % W + 0 * i, j + 0 * i]
    return [x[..., r, c] * np.array(s).reshape(3, 1, 1) for s, r, c in zip(signs, rows, cols)]


def test_each_field_lands_in_one_declared_frame_uniformly_and_never_valid_pixels_stay_zero():
    """Against the closed form (`kolmogorov_images`): every augmented field, taken back to physical
    units, is one of its four images at its moved valid pixels, and is 0 at its moved never-valid ones;
    over 400 fields each frame is drawn 100 ± 39 times (4.5 binomial standard deviations of
    400 · 1/4 · 3/4, so a fair draw fails once in ~10⁵ runs) and a tenth of them stay the identity."""
    gen = torch.Generator().manual_seed(0)
    n = 400
    x = torch.randn(n, 3, H, W, generator=gen, dtype=torch.float64)
    valid = torch.ones(n, 1, H, W, dtype=torch.float64)
    valid[:, :, 3:6, 5:11] = 0  # land: never valid
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    z = (x - m) / s * valid
    before = (z.clone(), valid.clone())
    frames = data_symmetries("auto", {"symmetries": kolmogorov_symmetries(4)}, ("u", "v", "vorticity"),
                             (True, True), (H, W), stats=type("S", (), {"mean": MEAN, "std": STD})())
    out, moved = in_random_frames(z, valid, frames, torch.Generator().manual_seed(1))
    physical = (out * s + m).numpy()
    images = kolmogorov_images(x.numpy())
    valid_images = kolmogorov_images(np.broadcast_to(valid.numpy(), (n, 3, H, W)))
    picked = []
    for row in range(n):
        matches = [k for k in range(4) if np.array_equal(moved[row, 0].numpy(), np.abs(valid_images[k][row, 0]))
                   and np.allclose(physical[row][:, moved[row, 0] > 0], images[k][row][:, moved[row, 0] > 0])]
        assert len(matches) == 1, row
        picked.append(matches[0])
        assert float(out[row, :, moved[row, 0] == 0].abs().max()) == 0.0
    counts = np.bincount(picked, minlength=4)
    assert np.all(np.abs(counts - 100) <= 39), counts
    assert torch.equal(z, before[0]) and torch.equal(valid, before[1])  # the inputs are not changed in place


def _grf_file(root, declared):
    from fieldpaint.data.grf import generate_grf
    from fieldpaint.data.io import write_dataset

    channels, split, attrs = generate_grf(16, 4, H, W, channels=1, nu=1.5, length_scale=4.0, seed=3)
    if declared:
        attrs = {**attrs, "periodic": "xy", "symmetries": json.dumps([{"reflect": "xy", "signs": {"field": -1}}])}
    path = root / f"grf{int(declared)}.nc"
    write_dataset(path, channels, split, attrs)
    return path


def _config(path, **data):
    from fieldpaint.config import from_dict

    return from_dict({
        "data": {"path": str(path), "variables": ["field"], "height": H, "width": W, **data},
        "model": {"channels": [8, 16], "norm_groups": 4, "attention_heads": 2},
        "diffusion": {"timesteps": 50},
        "train": {"epochs": 1, "batch_size": 8, "ema_warmup_steps": 5, "eval_train_samples": 8, "augment": "symmetries"},
    })


def test_augmentation_leaves_the_steps_timesteps_and_noise_those_of_an_unaugmented_run(tmp_path):
    """The batch's t and noise come from the step's stream before the frames are drawn, so switching
    augmentation on changes the fields only; the point reflection with a sign flip moves some of them."""
    from fieldpaint.data.stream import load_training_data
    from fieldpaint.runtime import setup_runtime
    from fieldpaint.data.fields import augmentation_frames
    from fieldpaint.train import make_batch

    config = _config(_grf_file(tmp_path, declared=True))
    train_data, _, stats = load_training_data(config.data)
    frames = augmentation_frames(config.data, stats)
    assert len(frames) == 2 and frames[0].is_identity
    runtime = setup_runtime("cpu")
    index = torch.arange(8)
    plain = make_batch(train_data, index, config, 0, 5, runtime)
    augmented = make_batch(train_data, index, config, 0, 5, runtime, frames)
    assert torch.equal(plain["t"], augmented["t"]) and torch.equal(plain["noise"], augmented["noise"])
    changed = [not torch.equal(a, b) for a, b in zip(plain["x0"], augmented["x0"])]
    assert any(changed) and not all(changed)  # 8 fair draws of 2 frames: all equal once in 128 seeds; seed 0 mixes
    flipped = frames[1].apply(plain["x0"][changed])  # what the declaration makes of those fields
    torch.testing.assert_close(augmented["x0"][changed], flipped)


def test_train_with_augmentation_says_so_and_bad_settings_stop_before_any_write(tmp_path, capsys):
    """End to end: a run on a file declaring a symmetry records 2 frames in run.json and its header;
    no declaration, or a model grid that crops the file's, is a one-line error (exit status 2 from
    the CLI) before the run folder exists."""
    import yaml

    from fieldpaint.cli import main
    from fieldpaint.train import train

    declared, bare = _grf_file(tmp_path, declared=True), _grf_file(tmp_path, declared=False)
    train(_config(declared), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["augment_frames"] == 2
    with pytest.raises(ConfigError, match="declares none"):
        train(_config(bare), tmp_path / "bare", progress=False)
    with pytest.raises(ConfigError, match="not crops of it"):
        train(_config(declared, height=8), tmp_path / "crop", progress=False)
    assert not (tmp_path / "bare").exists() and not (tmp_path / "crop").exists()
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"data": {"path": str(bare), "variables": ["field"], "height": H, "width": W},
                                           "model": {"channels": [8, 16], "norm_groups": 4},
                                           "train": {"epochs": 1, "augment": "symmetries"}}))
    capsys.readouterr()
    assert main(["train", "--config", str(config_file), "--run-dir", str(tmp_path / "cli"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "declares none" in err and "\n" not in err and not (tmp_path / "cli").exists()
