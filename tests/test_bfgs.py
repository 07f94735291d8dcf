"""Tests for the batched projected BFGS (fieldpaint.baselines.gp.bfgs) on functions whose
minimisers are known in closed form."""

from __future__ import annotations

import torch

from fieldpaint.baselines.gp.bfgs import bfgs

BOX = torch.tensor([10.0, 10.0], dtype=torch.float64)


def test_a_batch_of_shifted_quadratics_each_reaches_its_own_minimum() -> None:
    """f_i(x) = (x - c_i)' A_i (x - c_i) / 2 has its minimum at c_i (A_i positive definite)."""
    gen = torch.Generator().manual_seed(0)
    P = 6
    centres = torch.randn(P, 3, generator=gen, dtype=torch.float64) * 3
    B = torch.randn(P, 3, 3, generator=gen, dtype=torch.float64)
    A = B @ B.mT + 0.5 * torch.eye(3, dtype=torch.float64)
    calls = []

    def fun(x, rows):
        calls.append(rows.clone())
        d = x - centres[rows]
        g = (A[rows] @ d[..., None])[..., 0]
        return 0.5 * (d * g).sum(-1), g

    lo, hi = torch.full((3,), -1e3, dtype=torch.float64), torch.full((3,), 1e3, dtype=torch.float64)
    x, f = bfgs(fun, torch.zeros(P, 3, dtype=torch.float64), lo, hi, max_step=10.0)
    # BFGS is exact on quadratics up to the gradient tolerance 1e-5: |x - c| <= |A^-1| 1e-5 < 1e-4
    torch.testing.assert_close(x, centres, rtol=0, atol=1e-4)
    assert (f < 1e-9).all()
    assert all(r.max() < P for r in calls)  # rows index the batch


def test_rosenbrock_reaches_one_one_from_several_starts() -> None:
    """f = (1 - x)^2 + 100 (y - x^2)^2, minimum 0 at (1, 1) (Nocedal & Wright 2006, eq. 2.22)."""
    def fun(v, rows):
        x, y = v[:, 0], v[:, 1]
        f = (1 - x).square() + 100 * (y - x.square()).square()
        g = torch.stack([-2 * (1 - x) - 400 * x * (y - x.square()), 200 * (y - x.square())], -1)
        return f, g

    starts = torch.tensor([[-1.2, 1.0], [0.0, 0.0], [2.0, -1.0], [-0.5, 2.5]], dtype=torch.float64)
    x, f = bfgs(fun, starts, -BOX, BOX, max_iter=300,
                gtol=1e-8, ftol=0.0)
    torch.testing.assert_close(x, torch.ones_like(x), rtol=0, atol=1e-4)
    assert (f < 1e-8).all()


def test_a_minimum_outside_the_box_is_found_on_its_bound() -> None:
    """min (x - 3)^2 + (y + 2)^2 + x y / 2 over [0, 1] x [-1, 1]: the unconstrained minimum
    lies outside; the constrained one is x = 1 (the bound), y = -1 (the bound): there the
    gradient (2 (x - 3) + y / 2, 2 (y + 2) + x / 2) = (-4.5, 2.5) points out of the box in both
    coordinates (KKT)."""
    def fun(v, rows):
        x, y = v[:, 0], v[:, 1]
        f = (x - 3).square() + (y + 2).square() + 0.5 * x * y
        return f, torch.stack([2 * (x - 3) + 0.5 * y, 2 * (y + 2) + 0.5 * x], -1)

    lo = torch.tensor([0.0, -1.0], dtype=torch.float64)
    hi = torch.tensor([1.0, 1.0], dtype=torch.float64)
    starts = torch.tensor([[0.5, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64)  # last: clamped
    x, _ = bfgs(fun, starts, lo, hi)
    torch.testing.assert_close(x, torch.tensor([[1.0, -1.0]] * 3, dtype=torch.float64),
                               rtol=0, atol=1e-12)  # exactly on the bounds: the projection


def test_one_bound_active_and_one_coordinate_free() -> None:
    """min (x + 1)^2 + (y - 0.3)^2 over x >= 0: x = 0 on its bound, y = 0.3 free inside."""
    def fun(v, rows):
        return (v[:, 0] + 1).square() + (v[:, 1] - 0.3).square(), \
            torch.stack([2 * (v[:, 0] + 1), 2 * (v[:, 1] - 0.3)], -1)

    lo = torch.tensor([0.0, -5.0], dtype=torch.float64)
    hi = torch.tensor([5.0, 5.0], dtype=torch.float64)
    x, _ = bfgs(fun, torch.tensor([[2.0, -3.0]], dtype=torch.float64), lo, hi)
    torch.testing.assert_close(x, torch.tensor([[0.0, 0.3]], dtype=torch.float64), rtol=0,
                               atol=1e-6)
