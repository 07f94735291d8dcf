"""EMA with decay warmup: closed-form values, buffers, swapping for evaluation, the notes' Run 1."""

import pytest
import torch
from torch import nn

from fieldpaint.ema import EMA, ema_decay_at
from fieldpaint.errors import CheckpointError


class Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value], dtype=torch.float64))


def test_decay_values():
    # decay · min(1, step / warmup): the values listed in the brief, by hand.
    assert ema_decay_at(0, 0.9999, 2000) == 0.0
    assert ema_decay_at(1000, 0.9999, 2000) == pytest.approx(0.49995, abs=1e-12)
    assert ema_decay_at(2000, 0.9999, 2000) == pytest.approx(0.9999, abs=1e-15)
    assert ema_decay_at(10**6, 0.9999, 2000) == pytest.approx(0.9999, abs=1e-15)
    assert ema_decay_at(0, 0.9999, 0) == 0.9999
    assert ema_decay_at(5, 0.9999, 0) == 0.9999


def test_first_update_with_warmup_copies_weights_exactly():
    torch.manual_seed(1)
    model = nn.Linear(5, 3)
    ema = EMA(model, decay=0.9999, warmup_steps=2000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    assert ema.update(model, step=0) == 0.0
    for name, p in model.named_parameters():
        assert torch.equal(ema.shadow[name], p.detach())


def test_closed_form_updates_on_a_scalar():
    model = Scalar(2.0)
    ema = EMA(model, decay=0.9, warmup_steps=4)
    expected = 2.0
    for step, value in enumerate([1.0, -3.0, 0.5, 4.0, 4.0, 10.0]):
        model.w.data.fill_(value)
        d = 0.9 * min(1.0, step / 4)
        expected = d * expected + (1 - d) * value
        ema.update(model, step)
        assert ema.shadow["w"].dtype == torch.float32
        assert ema.shadow["w"].item() == pytest.approx(expected, rel=1e-6)


def test_shadow_is_fp32_for_low_precision_models():
    model = nn.Linear(4, 4).to(torch.bfloat16)
    ema = EMA(model, decay=0.5, warmup_steps=0)
    assert all(s.dtype == torch.float32 for s in ema.shadow.values())
    ema.copy_to(model)
    assert model.weight.dtype == torch.bfloat16


def test_buffers_follow_the_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.99, warmup_steps=0)
    model.train()
    for step in range(3):
        model(torch.randn(16, 3) * 5 + 2)
        ema.update(model, step)
    bn = model[1]
    assert torch.equal(ema.buffers["1.running_mean"], bn.running_mean)  # copied, not averaged
    assert torch.equal(ema.buffers["1.running_var"], bn.running_var)
    assert ema.buffers["1.num_batches_tracked"].item() == 3
    assert set(ema.state_dict()) == set(model.state_dict())


def test_swapped_in_restores_raw_weights_even_on_error():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5, warmup_steps=0)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 10)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped_in(model) as m:
        assert torch.equal(m.weight, ema.shadow["weight"])
        assert not torch.equal(m.weight, raw["weight"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k])
    with pytest.raises(RuntimeError, match="boom"):
        with ema.swapped_in(model):
            raise RuntimeError("boom")
    assert torch.equal(model.weight, raw["weight"])


def test_state_dict_round_trip_and_errors():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, 0.9, 10)
    with torch.no_grad():
        model[0].weight.mul_(3)
    ema.update(model, 5)
    other = EMA(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), 0.9, 10)
    other.load_state_dict(ema.state_dict())
    for k, v in ema.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    fresh.load_state_dict(ema.state_dict())  # keys are the model's own: loads straight in
    state = dict(ema.state_dict())
    del state["0.bias"]
    with pytest.raises(CheckpointError, match="0.bias"):
        other.load_state_dict(state)
    with pytest.raises(CheckpointError, match="0.weight"):
        EMA(nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5)), 0.9, 10).load_state_dict(ema.state_dict())


def _run(warmup_steps: int, steps: int, values) -> float:
    model = Scalar(values(-1))
    ema = EMA(model, decay=0.9999, warmup_steps=warmup_steps)
    for step in range(steps):
        model.w.data.fill_(values(step))
        ema.update(model, step)
    return ema.shadow["w"].item()


def test_run1_no_warmup_shadow_stays_at_init():
    """The notes' Run 1: decay 0.9999, no warmup, 13 epochs x 143 batches = 1859 updates."""
    steps = 13 * 143
    frac_init = 0.9999 ** steps
    assert frac_init == pytest.approx(0.83, abs=0.005)  # "~83 % random initialisation"
    # Init weight 1, trained weight 0 from the first step on: the shadow is exactly the init share.
    assert _run(0, steps, lambda k: 1.0 if k < 0 else 0.0) == pytest.approx(frac_init, rel=1e-4)
    assert _run(2000, steps, lambda k: 1.0 if k < 0 else 0.0) == 0.0
    # A weight moving steadily from 0 to 1: without warmup the shadow lags far behind
    # (recursion by hand: 0.0875); with warmup 2000 it follows within a few percent (0.9935).
    moving = lambda k: (k + 1) / steps  # noqa: E731
    no_warmup, warmup = _run(0, steps, moving), _run(2000, steps, moving)
    assert no_warmup < 0.1
    assert warmup > 0.99
