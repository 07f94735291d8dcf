"""Declared symmetries (fieldpaint.data.symmetry) and the members drawn in their frames."""

import json

import numpy as np
import pytest
import torch

from fieldpaint.data.kolmogorov import generate_kolmogorov, random_initial_vorticity
from fieldpaint.data.spectral import KolmogorovOperators, SpectralGrid, curl, forcing_vorticity, lawson_rk4_step, \
    output_fields
from fieldpaint.data.symmetry import Symmetry, data_symmetries, kolmogorov_symmetries
from fieldpaint.errors import DataError
from fieldpaint.mean_step import with_symmetric_frames
from fieldpaint.reconstruct import FixedMembers, innermost
from test_mean_step import tiny_case, tiny_conditional

VARIABLES = ("u", "v", "vorticity")


def kolmogorov_frames(height, width, variables=VARIABLES):
    return data_symmetries("auto", {"symmetries": kolmogorov_symmetries(4)}, variables, (True, True), (height, width))


def run_flow(omega_hat, grid, ops, steps=40, dt=0.01):
    with torch.no_grad():
        for _ in range(steps):
            omega_hat = lawson_rk4_step(omega_hat, dt, ops.linear, ops.nonlinear)
    return torch.stack(output_fields(omega_hat, grid, grid.height, grid.width), dim=1)  # (B, 3, H, W)


def test_the_kolmogorov_declaration_maps_solutions_of_the_flow_to_solutions():
    """Closed form: the point reflection, the shift-reflect by half a forcing period and their product
    commute with the forced Navier-Stokes flow (sin(4y) forcing, drag, viscosity): the flow of a
    transformed start is the transformed flow, to float32 round-off (1e-4 of the field's scale), while a
    wrong declaration (the shift-reflect without u's sign flip, or with a quarter-period shift) is not
    (> 1e-2)."""
    grid = SpectralGrid(32, 32)
    ops = KolmogorovOperators(grid, 0.02, 0.1, forcing_vorticity(grid, 4))
    start = random_initial_vorticity(grid, [3])
    u, v, omega = output_fields(start, grid, 32, 32)
    state = torch.stack([u, v, omega], dim=1)
    after = run_flow(start, grid, ops)
    scale = after.abs().max()

    def flow_of(transformed):  # start the flow from a transformed (u, v)'s vorticity
        omega0 = curl(transformed[:, 0].double(), transformed[:, 1].double()).float()
        return run_flow(grid.to_spectral(omega0) * grid.keep, grid, ops)

    frames = kolmogorov_frames(32, 32)
    assert len(frames) == 4 and frames[0].is_identity
    for g in frames[1:]:
        torch.testing.assert_close(g.apply(state)[:, 2], curl(*g.apply(state)[0, :2].double()).float()[None],
                                   atol=1e-3 * float(omega.abs().max()), rtol=0)  # the vorticity's declared sign
        assert float((flow_of(g.apply(state)) - g.apply(after)).abs().max()) < 1e-4 * scale
    shift_reflect = frames[2]
    wrong = [Symmetry("x", shift_reflect.shift, (True, True), (1.0, 1.0, -1.0)),
             Symmetry("x", (shift_reflect.shift[0] // 2, 0), (True, True), shift_reflect.signs)]
    for g in wrong:
        assert float((flow_of(g.apply(state)) - g.apply(after)).abs().max()) > 1e-2 * scale


def test_reflection_is_about_index_zero_on_a_wrapping_axis_and_about_the_centre_otherwise():
    """Index maps written out: j -> -j mod n where the field wraps, j -> n-1-j elsewhere; invert undoes
    apply; a mask (signed=False) is moved without signs."""
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(1, 2, 4, 5)
    g = Symmetry("xy", (1, 2), (True, False), (-1.0, 1.0))
    out = g.apply(x)
    for i in range(4):
        for j in range(5):
            source = ((-(i - 1)) % 4, 4 - ((j - 2) % 5))  # rolled by (1, 2), then reflected back
            assert out[0, 0, i, j] == -x[0, 0, source[0], source[1]]
            assert out[0, 1, i, j] == x[0, 1, source[0], source[1]]
    torch.testing.assert_close(g.invert(out), x, rtol=0, atol=0)
    mask = torch.rand(3, 2, 4, 5)
    torch.testing.assert_close(g.invert(g.apply(mask, signed=False), signed=False), mask, rtol=0, atol=0)
    assert (g.apply(mask, signed=False) >= 0).all()


def test_the_generated_file_declares_the_box_symmetries_for_its_variables():
    _, _, attrs = generate_kolmogorov(4, 0, 16, 32, spinup_time=1.0, snapshots_per_trajectory=4)
    frames = data_symmetries("auto", attrs, ("u", "v"), (True, True), (16, 32))
    assert [g.reflect for g in frames] == ["", "xy", "x", "y"]
    assert [g.shift for g in frames] == [(0, 0), (0, 0), (-2, 0), (2, 0)]  # half of a 4-row forcing period
    assert len(data_symmetries("auto", attrs, VARIABLES, (True, True), (16, 32))) == 4  # vorticity has a sign


@pytest.mark.parametrize("attrs, setting, message", [
    ({"symmetries": "[{"}, "auto", "not JSON"),
    ({"symmetries": '{"reflect": "x"}'}, "auto", "JSON list"),
    ({"symmetries": '[{"reflect": "z", "signs": {"u": 1}}]'}, "auto", "axes among"),
    ({"symmetries": '[{"reflect": "x", "signs": {"v": 1}}]'}, "auto", "no sign for variable"),
    ({"symmetries": '[{"reflect": "x", "signs": {"u": 2}}]'}, "auto", "1 or -1"),
    ({"symmetries": '[{"shift": [0.1, 0], "signs": {"u": 1}}]'}, "auto", "whole number of pixels"),
    ({"symmetries": '[{"shift": [0, 0.5], "signs": {"u": 1}}]'}, "auto", "does not wrap"),
    ({"symmetries": '[{"flip": "x"}]'}, "auto", "a symmetry is"),
    ({}, "sometimes", "must be one of"),
])
def test_a_bad_declaration_is_a_one_line_data_error(attrs, setting, message):
    with pytest.raises(DataError, match=message) as err:
        data_symmetries(setting, attrs, ("u",), (True, False), (16, 32))
    assert "\n" not in str(err.value)


def test_none_or_no_declaration_leaves_the_identity_alone():
    declared = {"symmetries": kolmogorov_symmetries(4)}
    assert len(data_symmetries("none", declared, ("u", "v"), (True, True), (32, 64))) == 1
    assert len(data_symmetries("auto", {}, ("u", "v"), (True, True), (32, 64))) == 1
    assert len(data_symmetries("auto", declared, ("u", "v"), (True, True), (32, 64))) == 4


def test_a_member_in_a_symmetric_frame_is_the_plain_sampler_on_transformed_inputs_mapped_back():
    """Second code path: member k drawn with symmetries is g_k⁻¹ of the plain member k (same generator)
    on the inputs g_k maps, g_k = symmetries[k mod 2], composed with the rolled frames; observations
    stay exact and never-valid pixels 0."""
    method = tiny_conditional(steps=3)
    obs, mask, valid = tiny_case()
    frames = (Symmetry("", (0, 0), (True, True), (1.0,)), Symmetry("xy", (4, 0), (True, True), (-1.0,)))
    K = 4
    drawn = method.with_symmetries(frames).with_mean_step(1).reconstruct(obs, mask, valid, samples=K, seed=2)
    plain = method.with_mean_step(1)
    for k in range(K):
        g = frames[k % 2]
        rec = plain.reconstruct(g.apply(obs), g.apply(mask, False), g.apply(valid, False), samples=K, seed=2)
        torch.testing.assert_close(drawn.members[:, k], g.invert(rec.members[:, k]), rtol=0, atol=1e-5)
    observed = (mask > 0.5) & (valid > 0.5)
    assert torch.equal(drawn.mean[observed], obs[observed]) and (drawn.mean[valid < 0.5] == 0).all()
    rolled = method.with_symmetries(frames).with_frames("x").reconstruct(obs, mask, valid, samples=K, seed=2)
    both = plain.with_frames("x")
    g = frames[1]  # member 1: symmetry 1, then rolled by 1/4 of the width
    rec = both.reconstruct(g.apply(obs), g.apply(mask, False), g.apply(valid, False), samples=K, seed=2)
    torch.testing.assert_close(rolled.members[:, 1], g.invert(rec.members[:, 1]), rtol=0, atol=1e-5)
    assert method.with_symmetries(frames[:1]).symmetries == ()  # the identity alone is no frames


def test_a_sign_offset_reaches_neither_the_unobserved_nor_the_never_valid_pixels():
    """A variable with a non-zero mean flipped in sign (normalised offset -2m/σ): members keep the
    observations exact and 0 where never valid, and member 1 is the plain sampler on inputs whose
    unobserved pixels are 0 (as in training), mapped back."""
    method = tiny_conditional(steps=2)
    obs, mask, valid = tiny_case()
    g = Symmetry("x", (0, 0), (True, True), (-1.0,)).normalised((2.0,), (1.0,))
    assert g.offsets == (-4.0,)
    frames = (Symmetry("", (0, 0), (True, True), (1.0,)), g)
    drawn = method.with_symmetries(frames).reconstruct(obs, mask, valid, samples=2, seed=1)
    observed = (mask > 0.5) & (valid > 0.5)
    torch.testing.assert_close(drawn.members[:, 1][observed], obs[observed], rtol=0, atol=1e-6)  # -(-z - 4) - 4
    assert torch.equal(drawn.mean[observed], obs[observed])
    assert (drawn.members[:, 1][(valid < 0.5).expand_as(obs)] == 0).all()
    moved = g.apply(obs) * g.apply(mask, False)
    rec = method.reconstruct(moved, g.apply(mask, False), g.apply(valid, False), samples=2, seed=1)
    land = (valid < 0.5).expand_as(obs)
    torch.testing.assert_close(drawn.members[:, 1], g.invert(rec.members[:, 1]).masked_fill(land, 0.0),
                               rtol=0, atol=1e-5)


def test_symmetric_frames_go_to_the_diffusion_methods_on_the_data_grid_only():
    method = tiny_conditional(steps=2)
    frames = kolmogorov_frames(16, 16, ("u",))
    methods = {"cond": FixedMembers(method, 4), "other": "a baseline"}
    changed, labels, used = with_symmetric_frames(methods, lambda: frames, (16, 16))
    assert labels == ["cond"] and len(innermost(changed["cond"]).symmetries) == 4 and used == frames
    assert innermost(methods["cond"]).symmetries == () and changed["other"] == "a baseline"

    def unread():
        raise AssertionError("the declaration is read only for a diffusion method on the grid")

    assert with_symmetric_frames(methods, unread, (16, 32))[1] == []  # another grid: the pixels are not its
    assert with_symmetric_frames({"other": "a baseline"}, unread, (16, 16))[1] == []
    assert with_symmetric_frames(methods, lambda: frames[:1], (16, 16))[1] == []


def test_a_symmetry_on_normalised_fields_is_the_physical_one_in_normalised_units():
    """Closed form: for z = (x - m) / σ, g.normalised(m, σ) maps z to (g(x) - m) / σ, so a sign flip of
    a variable with a non-zero mean (a = 10 + ...) is not applied as -z; invert undoes it."""
    x = 10.0 + torch.randn(3, 2, 8, 16, generator=torch.Generator().manual_seed(0))
    mean, std = (10.0, 0.5), (3.0, 1.0)
    m, s = torch.tensor(mean).view(1, 2, 1, 1), torch.tensor(std).view(1, 2, 1, 1)
    g = Symmetry("x", (2, 0), (True, True), (-1.0, 1.0))
    z = (x - m) / s
    torch.testing.assert_close(g.normalised(mean, std).apply(z), (g.apply(x) - m) / s)
    torch.testing.assert_close(g.normalised(mean, std).invert(g.normalised(mean, std).apply(z)), z)
    assert g.normalised((0.0, 0.5), std).offsets == ()  # a zero-mean odd variable needs none


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import train_tiny_grf_run

    return train_tiny_grf_run(tmp_path_factory.mktemp("symmetric"), conditioning="concat")


def _observations(root, attrs):
    import xarray as xr

    truth = np.random.default_rng(0).normal(size=(2, 16, 32))
    seen = np.random.default_rng(1).random(truth.shape) < 0.2
    path = root / f"obs{len(attrs)}.nc"
    xr.Dataset({"field": (("time", "y", "x"), np.where(seen, truth, np.nan))}, attrs=attrs).to_netcdf(path)
    return path, truth, seen


def test_inpaint_draws_members_in_the_frames_the_input_declares(tiny_run, tmp_path, capsys):
    """The CLI end to end: --symmetric-frames reads the input's `symmetries` attribute and records the
    frames' number; observations stay exact. No declaration, a baseline, or a bad declaration is a
    one-line error with exit status 2 and no output file."""
    import xarray as xr

    from fieldpaint.cli import main

    declared = json.dumps([{"reflect": "xy", "signs": {"field": 1}}, {"reflect": "y", "signs": {"field": -1}}])
    obs, truth, seen = _observations(tmp_path, {"symmetries": declared})
    out = tmp_path / "rec.nc"
    args = ["inpaint", "--checkpoint", str(tiny_run / "run"), "--input", str(obs), "--out", str(out),
            "--samples", "3", "--steps", "3", "--no-progress", "--symmetric-frames"]
    assert main(args) == 0
    with xr.open_dataset(out) as rec:
        assert rec.attrs["symmetric_frames"] == 3
        np.testing.assert_allclose(rec["field"].values[seen], truth[seen], rtol=1e-5, atol=1e-5)
        assert np.isfinite(rec["field"].values).all()
    bare, _, _ = _observations(tmp_path, {})
    bad, _, _ = _observations(tmp_path, {"symmetries": "[{", "x": 1})
    for input_path, extra, message in [(bare, [], "declares no symmetries"), (obs, ["--method", "linear"], "not linear"),
                                       (bad, [], "not JSON")]:
        capsys.readouterr()
        target = tmp_path / "none.nc"
        changed = [str(input_path) if a == str(obs) else str(target) if a == str(out) else a for a in args]
        assert main(changed + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and not target.exists()


def _declare(path, value):
    import netCDF4

    with netCDF4.Dataset(path, "a") as ds:
        ds.symmetries = value


def test_evaluate_draws_the_diffusion_members_in_the_declared_frames_and_says_so(tiny_run, tmp_path):
    """End to end: with the training file declaring a symmetry, mean_step.json records 2 frames and
    the report's header names them; a malformed declaration stops an evaluation of the model before
    anything is written, and does not concern one of the baselines alone."""
    from fieldpaint.evaluate import evaluate_and_report
    from fieldpaint.runs import load_run

    data = tiny_run / "grf.nc"
    options = dict(families=["random"], coverages=[0.9], n=2, samples=2, validation_fields=2, progress=False)
    _declare(data, json.dumps([{"reflect": "xy", "signs": {"field": 1}}]))
    run = load_run(tiny_run / "run")
    evaluate_and_report(tmp_path / "eval", runs=[run], methods=["conditional-dpm", "linear"],
                        sampler={"steps": 2}, **options)
    choices = json.loads((tmp_path / "eval" / "mean_step.json").read_text())
    assert [c["symmetric_frames"] for c in choices] == [2]
    header = (tmp_path / "eval" / "report.md").read_text()
    assert "symmetric frames: conditional-dpm: member k of K drawn in frame k mod 2" in header
    assert "reflected along x and y" in header
    _declare(data, "[{")
    with pytest.raises(DataError, match="not JSON"):
        evaluate_and_report(tmp_path / "bad", runs=[run], methods=["conditional-dpm"], sampler={"steps": 2}, **options)
    assert not (tmp_path / "bad").exists()
    evaluate_and_report(tmp_path / "kriging", runs=[], data_path=str(data), methods=["linear"], **options)
    _declare(data, "")
