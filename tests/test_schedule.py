"""Noise schedules, x0/eps/v conversions, the posterior and the masked diffusion loss.

Reference values are recomputed here with the `math` module from the papers' closed forms, an
implementation independent of the tensor code under test.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fieldpaint.diffusion.loss import diffusion_loss, draw_timesteps, masked_mse
from fieldpaint.diffusion.schedule import (cosine_alphas_cumprod, eps_from_v, eps_from_x0, linear_betas,
                                           make_schedule, posterior_mean_variance, predict_x0_eps, q_sample,
                                           v_target, x0_from_eps, x0_from_v)

T = 1000
S = 0.008


def f_cos(t: float) -> float:
    """Nichol & Dhariwal 2021, eq. 17: f(t) = cos(((t/T) + s)/(1 + s) · π/2)²."""
    return math.cos((t / T + S) / (1 + S) * math.pi / 2) ** 2


def cosine_ac_by_hand(t: int) -> float:
    """ᾱ_t = Π_{i<=t} (1 - β_i) with β_i = min(1 - f(i+1)/f(i), 0.999), one float at a time."""
    prod = 1.0
    for i in range(t + 1):
        prod *= 1 - min(1 - f_cos(i + 1) / f_cos(i), 0.999)
    return prod


@pytest.mark.parametrize("t", [0, 249, 499, 749])
def test_cosine_alphas_cumprod_reference(t):
    ac = cosine_alphas_cumprod(T)
    assert ac.dtype == torch.float64 and ac.shape == (T,)
    assert ac[t].item() == pytest.approx(cosine_ac_by_hand(t), rel=1e-12)
    # No clipping before the last step, so the product telescopes to f(t+1)/f(0).
    assert ac[t].item() == pytest.approx(f_cos(t + 1) / f_cos(0), rel=1e-12)


def test_cosine_conventions():
    sched = make_schedule("cosine", T)
    ac, betas = sched.alphas_cumprod, sched.betas
    # ᾱ_0 = 1 - β_0 < 1: the first forward step already adds noise (β_0 = 1 - f(1)/f(0) ≈ 3.9e-5).
    assert ac[0].item() == pytest.approx(1 - betas[0].item(), abs=0)
    assert ac[0].item() == pytest.approx(0.99996, abs=5e-6)
    assert ac[0].item() < 1.0
    assert ac[499].item() == pytest.approx(0.49384, abs=1e-5)  # f(500)/f(0), by hand above
    assert betas[-1].item() == 0.999  # f(T) = 0 would give β = 1: clipped
    assert betas[:-1].max().item() < 0.999
    assert torch.all(torch.diff(ac) < 0)


def test_linear_schedule_reference():
    betas = linear_betas(T)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    # Ho et al. 2020: β_i = 1e-4 + i (0.02 - 1e-4)/999; ᾱ_{T-1} = Π (1 - β_i) ≈ 4.04e-5.
    prod = 1.0
    for i in range(T):
        prod *= 1 - (1e-4 + i * (0.02 - 1e-4) / (T - 1))
    sched = make_schedule("linear", T)
    assert sched.alphas_cumprod[-1].item() == pytest.approx(prod, rel=1e-10)
    assert prod == pytest.approx(4.04e-5, rel=0.01)
    # Shorter schedules scale β by 1000/T (Nichol & Dhariwal 2021), so they still end near noise.
    short = linear_betas(100)
    assert short[0].item() == pytest.approx(1e-3) and short[-1].item() == pytest.approx(0.2)
    assert make_schedule("linear", 100).alphas_cumprod[-1].item() < 1e-4


def test_make_schedule_rejects_unknown_kind_and_moves():
    with pytest.raises(ValueError, match="sigmoid"):
        make_schedule("sigmoid", 10)
    sched = make_schedule("cosine", 50)
    assert sched.T == 50
    moved = sched.to("cpu")
    assert torch.equal(moved.betas, sched.betas) and moved.alphas_cumprod.dtype == torch.float64


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_q_sample_per_sample_coefficients(kind):
    sched = make_schedule(kind, T)
    ts = [0, 10, 500, 999]
    x0 = torch.randn(4, 2, 3, 5)
    noise = torch.randn(4, 2, 3, 5)
    xt = q_sample(x0, torch.tensor(ts), noise, sched.alphas_cumprod)
    for b, t in enumerate(ts):
        a = sched.alphas_cumprod[t].item()
        expected = math.sqrt(a) * x0[b] + math.sqrt(1 - a) * noise[b]  # Ho et al. eq. 4
        torch.testing.assert_close(xt[b], expected)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_round_trips(kind):
    ac = make_schedule(kind, T).alphas_cumprod
    t = torch.tensor([0, 1, 250, 700, 998, 999])
    x0 = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    xt = q_sample(x0, t, eps, ac)
    torch.testing.assert_close(eps_from_x0(xt, t, x0, ac), eps)
    torch.testing.assert_close(x0_from_eps(xt, t, eps, ac), x0, atol=1e-9, rtol=1e-9)
    v = v_target(x0, eps, t, ac)
    torch.testing.assert_close(x0_from_v(xt, t, v, ac), x0)
    torch.testing.assert_close(eps_from_v(xt, t, v, ac), eps)
    for prediction, out in (("eps", eps), ("v", v)):
        x0_hat, eps_hat = predict_x0_eps(out, xt, t, ac, prediction)
        torch.testing.assert_close(x0_hat, x0, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(eps_hat, eps)
    with pytest.raises(ValueError, match="x0"):
        predict_x0_eps(eps, xt, t, ac, "x0")


def test_v_target_reference_and_float32():
    ac = make_schedule("cosine", T).alphas_cumprod
    a = ac[300].item()
    x0, eps = torch.full((1, 1, 1, 1), 0.7), torch.full((1, 1, 1, 1), -1.3)
    v = v_target(x0, eps, torch.tensor([300]), ac)
    assert v.dtype == torch.float32
    # Salimans & Ho 2022: v = √ᾱ ε - √(1-ᾱ) x_0
    assert v.item() == pytest.approx(math.sqrt(a) * -1.3 - math.sqrt(1 - a) * 0.7, rel=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_posterior_variance(kind):
    sched = make_schedule(kind, T)
    var = sched.posterior_variance
    assert var[0].item() == 0.0  # ᾱ_{-1} = 1: x_0 is known exactly at the last reverse step
    assert torch.all(torch.diff(var) >= 0)
    assert torch.all(var <= sched.betas)
    x = torch.randn(3, 1, 2, 2)
    mean, v, log_v = posterior_mean_variance(x, torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 999]), sched)
    assert v.shape == (3, 1, 1, 1) and v[0].item() == 0.0
    assert log_v[0].item() == pytest.approx(math.log(var[1].item()))  # clipped: log β̃_0 := log β̃_1
    assert log_v[2].item() == pytest.approx(math.log(var[999].item()))
    torch.testing.assert_close(mean[0], x[0])  # μ̃_0 = x_0


def test_posterior_mean_matches_eps_form():
    """Ho et al. eq. 11: with x_0 = x0_from_eps, μ̃_t = (x_t - β_t/√(1-ᾱ_t) ε) / √α_t."""
    sched = make_schedule("linear", T)
    ac, betas = sched.alphas_cumprod, sched.betas
    t = torch.tensor([5, 400, 999])
    xt = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    eps = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    mean, _, _ = posterior_mean_variance(x0_from_eps(xt, t, eps, ac), xt, t, sched)
    for b, s in enumerate(t.tolist()):
        beta, a = betas[s].item(), ac[s].item()
        expected = (xt[b] - beta / math.sqrt(1 - a) * eps[b]) / math.sqrt(1 - beta)
        torch.testing.assert_close(mean[b], expected)


# ----------------------------------------------------------------------------------------------
# loss


class Recorder(torch.nn.Module):
    """A 3x3 conv (so pixels see their neighbours) that remembers its last inputs."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, t, cond):
        self.seen = (x, t, cond)
        return self.conv(x)


def _batch(valid_fraction: float = 0.6):
    x0 = torch.randn(3, 2, 8, 8)
    valid = (torch.rand(3, 1, 8, 8) < valid_fraction).float()
    return x0, valid


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_ignores_invalid_pixels(prediction):
    sched = make_schedule("cosine", 100)
    model = Recorder()
    x0, valid = _batch()
    t, noise = torch.tensor([3, 50, 99]), torch.randn(3, 2, 8, 8)
    clean = diffusion_loss(model, x0 * valid, valid, sched, prediction, t=t, noise=noise)
    garbage = torch.where(valid.bool().expand_as(x0), x0, torch.full_like(x0, float("nan")))
    garbage[:, :, :2] = torch.where(valid[:, :, :2].bool(), garbage[:, :, :2], 1e6)
    dirty = diffusion_loss(model, garbage, valid, sched, prediction, t=t, noise=noise)
    assert torch.isfinite(dirty)
    assert dirty.item() == clean.item()


def test_masked_mse_normalises_by_valid_pixel_channels():
    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    valid = torch.zeros(2, 1, 4, 4)
    valid[0, 0, :2] = 1
    valid[1, 0, 3, 3] = 1
    keep = valid.bool().expand_as(pred)
    expected = F.mse_loss(pred[keep], target[keep])
    pred_bad = torch.where(keep, pred, torch.full_like(pred, float("inf")))
    torch.testing.assert_close(masked_mse(pred_bad, target, valid), expected)
    assert masked_mse(pred, target, torch.zeros(2, 1, 4, 4)).item() == 0.0


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_equals_plain_mse_when_all_valid(prediction):
    sched = make_schedule("linear", 100)
    model = Recorder()
    x0 = torch.randn(2, 2, 8, 8)
    t, noise = torch.tensor([7, 93]), torch.randn(2, 2, 8, 8)
    loss = diffusion_loss(model, x0, torch.ones(2, 1, 8, 8), sched, prediction, t=t, noise=noise)
    a = sched.alphas_cumprod[t].float().view(2, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = noise if prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(loss, F.mse_loss(model.conv(xt), target))
    torch.testing.assert_close(model.seen[0], xt)


def test_loss_draws_from_generator_and_passes_cond():
    sched = make_schedule("cosine", 100)
    model = Recorder()
    x0, valid = _batch()
    cond = torch.randn(3, 3, 8, 8)
    losses = [diffusion_loss(model, x0, valid, sched, "v", cond=cond, generator=torch.Generator().manual_seed(4))
              for _ in range(2)]
    assert losses[0].item() == losses[1].item()
    assert model.seen[2] is cond
    t = model.seen[1]
    assert t.shape == (3,) and t.dtype == torch.int64 and 0 <= t.min() and t.max() < 100
    losses[0].backward()
    assert model.conv.weight.grad is not None and torch.isfinite(model.conv.weight.grad).all()


def test_draw_timesteps_terminal_fraction():
    n, T = 200_000, 100
    uniform = draw_timesteps(n, T, 0.0, generator=torch.Generator().manual_seed(5))
    # f = 0 makes exactly the generator calls of plain uniform t, so earlier runs' streams stay as they were
    assert torch.equal(uniform, torch.randint(0, T, (n,), generator=torch.Generator().manual_seed(5)))
    f = 0.3
    t = draw_timesteps(n, T, f, generator=torch.Generator().manual_seed(5))
    assert t.dtype == torch.int64 and 0 <= t.min() and t.max() == T - 1
    p = f + (1 - f) / T  # P(t = T-1): the terminal draws plus the uniform ones that land there
    share = (t == T - 1).double().mean().item()
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 binomial standard errors
    # below T-1 the law is still uniform: each of the other levels holds (1-f)/T of the draws
    counts = torch.bincount(t[t < T - 1], minlength=T - 1).double() / n
    assert (counts - (1 - f) / T).abs().max() < 5 * math.sqrt((1 - f) / T / n)
