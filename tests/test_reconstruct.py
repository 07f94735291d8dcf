"""One place builds every method: names, fit rules, a run loaded once, and every name buildable."""

import numpy as np
import pytest
import torch

from fieldpaint.checkpoint import save_checkpoint
from fieldpaint.cli import build_parser
from fieldpaint.config import from_dict, to_dict
from fieldpaint.data.fields import FieldSplit, FieldStats
from fieldpaint.data.grf import sample_matern_grf
from fieldpaint.ema import EMA
from fieldpaint.errors import FieldpaintError
from fieldpaint.models.registry import build_model
from fieldpaint.reconstruct import (BASELINES, DIFFUSION_METHODS, METHOD_NAMES, METHODS, BaselineData,
                                    build_reconstructor, check_fits, fits)
from fieldpaint.runs import load_run


def tiny_config(conditioning: str):
    return from_dict({"data": {"variables": ["u", "v"], "height": 16, "width": 16},
                      "model": {"channels": [8, 16], "norm_groups": 8, "attention_levels": [],
                                "num_res_blocks": 1, "time_embed_mult": 2, "film_channels": 8,
                                "conditioning": conditioning},
                      "diffusion": {"timesteps": 100, "prediction": "v"}})


def saved_run(tmp_path, conditioning: str, with_ema: bool = True):
    """A run folder whose EMA shadow differs from its raw weights."""
    config = tiny_config(conditioning)
    model = build_model(config)
    ema = EMA(model, decay=0.5, warmup_steps=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    stats = {"variables": ["u", "v"], "mean": [1.0, 2.0], "std": [3.0, 4.0]}
    save_checkpoint(tmp_path / "checkpoints" / "last.safetensors", model=model, ema=ema if with_ema else None,
                    step=1, epoch=1, config=to_dict(config), stats=stats)
    return config, model, ema


def test_every_name_has_one_kind_and_the_cli_offers_them_all():
    assert set(BASELINES) | set(DIFFUSION_METHODS) == set(METHOD_NAMES) and not set(BASELINES) & set(DIFFUSION_METHODS)
    inpaint = build_parser()._subparsers._group_actions[0].choices["inpaint"]
    (method,) = [a for a in inpaint._actions if a.dest == "method"]
    assert tuple(method.choices) == METHOD_NAMES
    for name in DIFFUSION_METHODS:  # each diffusion method fits exactly one kind of model
        assert fits(name, True) != fits(name, False)


@pytest.mark.parametrize("with_ema", [True, False])
def test_a_run_loads_once_with_its_ema_weights_and_statistics(tmp_path, with_ema):
    config, model, ema = saved_run(tmp_path, "concat", with_ema)
    run = load_run(tmp_path)
    expected = ema.state_dict() if with_ema else model.state_dict()
    for key, value in run.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert run.stats.std == (3.0, 4.0) and run.config == config and run.conditional
    rec = build_reconstructor("conditional", run=run, sampler={"steps": 4})
    assert rec.model is run.model and rec.steps == 4  # built on the loaded weights, not a second load
    with pytest.raises(FieldpaintError, match="unconditional"):
        build_reconstructor("repaint", run=run)


def test_fit_errors_name_the_methods_that_would_fit():
    with pytest.raises(FieldpaintError, match="conditional"):
        check_fits("ddnm", "concat")
    with pytest.raises(FieldpaintError, match="repaint"):
        check_fits("conditional", "none")
    with pytest.raises(FieldpaintError, match="unknown method"):
        build_reconstructor("dps")
    with pytest.raises(FieldpaintError, match="trained model"):
        build_reconstructor("ddnm")


def test_every_baseline_is_buildable_and_reconstructs_observed_pixels_exactly():
    x = torch.from_numpy(sample_matern_grf(12, 1, 16, 16, length_scale=4.0, seed=3)).float()
    valid = torch.ones(12, 1, 16, 16)
    train = FieldSplit(x[:8], valid[:8], np.arange(8))
    attrs = {"kernel": "matern", "nu": 1.5, "length_scale": 4.0, "variance": 1.0, "channels": 1}
    data = BaselineData(FieldStats(("field",), (0.0,), (1.0,)), attrs, load_train=lambda: train)
    mask = (torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    for name in BASELINES:
        rec = build_reconstructor(name, data=data, gp={"nu": 1.5}).reconstruct(x[8:] * mask, mask, valid[8:])
        seen = mask.expand_as(rec.mean) > 0.5
        torch.testing.assert_close(rec.mean[seen], x[8:][seen].to(rec.mean.dtype), rtol=1e-4, atol=1e-4)
        assert bool(torch.isfinite(rec.mean).all()), name
    assert METHODS["gp-dataset"].needs == "data"


def test_sampling_precision_bf16_is_close_to_fp32_and_auto_follows_the_hardware():
    """bf16 autocast changes only the network's arithmetic (8 significant bits, relative rounding
    2^-8 = 0.4 %), so on the same draws the means differ, but by far less than the fields' own size
    (a loose bound: 5 % of the fp32 mean's RMS, about 12 times bf16's rounding); an fp32 sampler
    on the same model is untouched by a bf16 one; 'auto' is bf16 for conditional v-models exactly
    where runtime.bf16_native says the device computes it natively, and fp32 for MMPS."""
    from fieldpaint.diffusion.reconstructor import DiffusionReconstructor
    from fieldpaint.runtime import bf16_native

    config = tiny_config("concat")
    model = build_model(config)
    with torch.no_grad():  # an untrained network's zero-initialised output layer would hide any rounding
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.randn((2, 2, 16, 16), generator=torch.Generator().manual_seed(3))
    mask = (torch.rand((2, 1, 16, 16), generator=torch.Generator().manual_seed(4)) < 0.2).float()
    valid = torch.ones((2, 1, 16, 16))
    means = {}
    for precision in ("fp32", "bf16"):
        method = DiffusionReconstructor(model, config, method="conditional-dpm", steps=4, precision=precision)
        means[precision] = method.reconstruct(x * mask, mask, valid, samples=2, seed=0).mean
    diff = (means["bf16"] - means["fp32"]).pow(2).mean().sqrt()
    assert 0 < diff < 0.05 * means["fp32"].pow(2).mean().sqrt()
    again = DiffusionReconstructor(model, config, method="conditional-dpm", steps=4, precision="fp32")
    torch.testing.assert_close(again.reconstruct(x * mask, mask, valid, samples=2, seed=0).mean, means["fp32"],
                               rtol=0, atol=0)  # building the bf16 one left the shared model as it was
    auto = DiffusionReconstructor(model, config, method="conditional-dpm", steps=4, precision="auto")
    assert auto.precision.name == ("bf16" if bf16_native(torch.device("cpu"))[0] else "fp32")
    assert auto.precision.channels_last == (auto.precision.name == "bf16")
    unconditional = tiny_config("none")
    assert DiffusionReconstructor(build_model(unconditional), unconditional, method="mmps",
                                  precision="auto").precision.name == "fp32"  # not measured in bf16
    with pytest.raises(FieldpaintError, match="precision must be one of"):
        DiffusionReconstructor(model, config, method="conditional-dpm", precision="fp16")
