"""The Rao-Blackwellised mean of a conditional model (fieldpaint.mean_step): the denoiser's x̂_0 at
one sampling step, averaged over the members, and the step chosen per group on training fields."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import train_tiny_grf_run
from fieldpaint.cli import main
from fieldpaint.config import from_dict
from fieldpaint.data.fields import FieldSplit, FieldStats
from fieldpaint.diffusion.frames import member_shift
from fieldpaint.diffusion.reconstructor import DiffusionReconstructor, KeptSteps
from fieldpaint.diffusion.samplers import dpm_solver_2m
from fieldpaint.diffusion.schedule import make_schedule
from fieldpaint.errors import FieldpaintError
from fieldpaint.evaluate import draw_case_masks, evaluate_and_report, score
from fieldpaint.mean_step import best_step, choose_mean_steps, frame_candidates, mean_steps_for, spread_scale
from fieldpaint.metrics import spread_skill
from fieldpaint.models.gaussian import GaussianDenoiser, conditional_denoiser
from fieldpaint.models.registry import build_model
from fieldpaint.reconstruct import FixedMembers, Reconstruction, innermost, member_count, with_mean_step
from fieldpaint.reference import VALIDATION_SEED

SCHEDULE = make_schedule("cosine", 1000)
H, W = 8, 16


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_the_noisiest_step_averages_to_the_exact_posterior_mean_on_the_gaussian_oracle():
    """With the exact E[x_0 | x_t, y] of a Gaussian prior, x̂_0 at level t is linear in x_t with gain
    √ᾱ_t Σ_post(ᾱ_t Σ_post + (1-ᾱ_t) I)⁻¹, so over the members' x_t its variance is about
    ᾱ_t σ_post⁴: at the first DPM-Solver++ level (t = T-1 of the cosine schedule, ᾱ = 2.4e-9) its
    K-member average is the posterior mean μ to within 1e-6 σ_post² in squared error, while the
    members' own average carries the Monte-Carlo error σ_post² / K in expectation. Measured (fixed
    seeds): step 1 3.7e-11, step 5 2.1e-5, the members' average 0.095 against 1/K = 0.125; its
    band [0.4, 2.0] / K is wide because the 64 hidden pixels' errors are correlated (a chi-square
    mean of fewer effective degrees of freedom)."""
    prior = GaussianDenoiser.matern(H, W, nu=1.5, length_scale=3.0, schedule=SCHEDULE, prediction="v")
    truth = prior.sample(1, 1, gen(3))
    mask = torch.zeros(H * W, dtype=torch.float64)
    mask[torch.randperm(H * W, generator=gen(4))[:H * W // 2]] = 1.0
    mask = mask.reshape(1, 1, H, W)
    K = 8
    obs, m = truth.expand(K, -1, -1, -1), mask.expand(K, -1, -1, -1)
    kept = KeptSteps(conditional_denoiser(prior, obs, m, SCHEDULE), (1, 5, 10))
    x, nfe = dpm_solver_2m(kept, obs.shape, SCHEDULE, generator=[gen(10 + k) for k in range(K)], steps=10,
                           obs=obs, mask=m, dtype=torch.float64)
    assert nfe == 10 and kept.calls == 10
    mu, sd = prior.posterior(truth, mask)
    hidden = mask[0, 0] < 0.5
    var = sd[0, 0][hidden].pow(2).mean().item()

    def error(field):  # squared error of a (1, H, W) mean against μ on hidden pixels, in units of σ_post²
        return (field[0][hidden] - mu[0, 0][hidden]).pow(2).mean().item() / var

    steps = kept.stacked().mean(dim=1)  # (3, 1, H, W): the members' averages at steps 1, 5, 10
    print(f"squared error / σ_post²: step 1 {error(steps[0]):.2e}, step 5 {error(steps[1]):.2e}, "
          f"members' average {error(x.mean(dim=0)):.3f} (1/K = {1 / K:.3f})")
    assert error(steps[0]) < 1e-9  # ~ᾱ_{T-1}: steps 2-4, at ᾱ ~1e-8 and above, would not pass
    members = error(x.mean(dim=0))
    assert 0.4 / K < members < 2.0 / K
    torch.testing.assert_close(steps[2], x.mean(dim=0), rtol=0, atol=1e-12)  # the last step is the sample
    assert error(steps[0]) < error(steps[1]) < members


def tiny_conditional(steps=4):
    config = from_dict({"data": {"variables": ["u"], "height": 16, "width": 16},
                        "model": {"channels": [8, 16], "norm_groups": 8, "attention_levels": [],
                                  "num_res_blocks": 1, "time_embed_mult": 2, "film_channels": 8,
                                  "conditioning": "concat"},
                        "diffusion": {"timesteps": 100, "prediction": "v"}})
    torch.manual_seed(0)
    return DiffusionReconstructor(build_model(config), config, method="conditional-dpm", steps=steps)


def tiny_case(n=2):
    x = torch.randn((n, 1, 16, 16), generator=gen(1))
    mask = (torch.rand((n, 1, 16, 16), generator=gen(2)) < 0.2).float()
    valid = torch.ones((n, 1, 16, 16))
    valid[:, :, :3, :3] = 0.0  # a never-valid corner
    return x * mask, mask, valid


def test_step_means_hold_the_members_average_last_and_reconstruct_returns_the_chosen_one():
    """Invariants of one code path against another: entry S of step_means is the members' average
    (reconstruct's mean); with mean_step = k, reconstruct's mean is entry k and its members are the
    same draws; every mean keeps the observations exact and 0 where never valid."""
    method = tiny_conditional(steps=4)
    obs, mask, valid = tiny_case()
    plain, means = method.step_means(obs, mask, valid, samples=3, seed=5)
    assert means.shape == (4, 2, 1, 16, 16) and plain.mean_step is None
    torch.testing.assert_close(means[-1], plain.mean, rtol=0, atol=1e-6)
    observed = ((mask > 0.5) & (valid > 0.5))
    for k in (1, 2):
        rec = method.with_mean_step(k).reconstruct(obs, mask, valid, samples=3, seed=5)
        assert rec.mean_step == k
        torch.testing.assert_close(rec.mean, means[k - 1], rtol=0, atol=0)
        torch.testing.assert_close(rec.members, plain.members, rtol=0, atol=0)
        torch.testing.assert_close(rec.std, plain.std, rtol=0, atol=0)
        assert torch.equal(rec.mean[observed], obs[observed])
        assert (rec.mean[(valid < 0.5).expand_as(rec.mean)] == 0).all()
    assert not torch.equal(means[0], means[-1])  # an untrained model's early x̂_0 is not its samples
    assert method.with_mean_step(4).mean_step is None  # the last step is the members' average


def test_a_mean_step_is_a_step_of_a_conditional_method():
    method = tiny_conditional(steps=4)
    for bad in (0, 5, 1.5, True):
        with pytest.raises(FieldpaintError, match="sampling step from 1 to 4"):
            method.with_mean_step(bad)
    unconditional = from_dict({"data": {"variables": ["u"], "height": 16, "width": 16},
                               "model": {"channels": [8, 16], "norm_groups": 8, "attention_levels": [],
                                         "num_res_blocks": 1, "time_embed_mult": 2},
                               "diffusion": {"timesteps": 100}})
    with pytest.raises(FieldpaintError, match="conditional methods"):
        DiffusionReconstructor(build_model(unconditional), unconditional, method="ddnm", steps=4, mean_step=2)


def test_wrappers_pass_the_mean_step_through_and_are_copied():
    from fieldpaint.api import on_model_grid

    method = tiny_conditional(steps=4)
    wrapped = FixedMembers(on_model_grid(method, method.config), 3)
    changed = with_mean_step(wrapped, 2)
    assert innermost(changed).mean_step == 2 and innermost(wrapped).mean_step is None
    assert member_count(changed, 9) == 3 and member_count(method, 9) == 9
    obs, mask, valid = tiny_case()
    small = [a[..., :12, :12] for a in (obs, mask, valid)]  # padded to the model's 16 x 16 and cropped back
    rec = changed.reconstruct(*small, samples=1, seed=0)
    assert rec.mean_step == 2 and rec.mean.shape == (2, 1, 12, 12) and rec.members.shape[1] == 3


def test_best_step_takes_the_lowest_geometric_mean_and_ties_go_to_the_later_step():
    errors = np.array([[4.0, 1.0], [1.0, 1.0], [2.0, 2.0]])  # geometric means 2, 1, 2
    assert best_step(errors)[0] == 2
    assert best_step(errors)[1] == pytest.approx([2.0, 1.0, 2.0])
    assert best_step(np.array([[1.0, 1.0], [1.0, 1.0]]))[0] == 2  # a tie: the members' average
    assert best_step(np.array([[np.inf, 1.0], [2.0, 2.0]]))[0] == 2  # a failed case rules its step out


class PlantedSteps:
    """A stand-in with step_means: step s's mean is truth + offsets[s] at every pixel, so its MSE on
    any case is offsets[s]², and the members' std is `std` everywhere; it records the masks it was given."""

    method, steps = "conditional-dpm", 3

    def __init__(self, offsets, std=0.2):
        self.offsets, self.masks, self.std = offsets, [], std

    def with_frames(self, frames):
        return self

    def step_means(self, obs, mask, valid, *, samples, seed):
        self.masks.append(mask.clone())
        truth = VALIDATION.x
        return Reconstruction(truth, torch.full_like(truth, self.std)), torch.stack([truth + o for o in self.offsets])


VALIDATION = FieldSplit(torch.randn((3, 1, 16, 16), generator=gen(7)), torch.ones((3, 1, 16, 16)),
                        torch.arange(3))


def test_the_chooser_scores_every_step_on_the_reference_validation_masks():
    planted = PlantedSteps([0.5, 0.1, 0.3])
    choices = choose_mean_steps({"m": (planted, 4)}, VALIDATION, ["random"], [0.9], seed=2)
    choice = choices[("random", 0.9)]["m"]
    assert choice["chosen"] == 2 and choice["steps"] == 3 and choice["fields"] == 3
    assert choice["validation_gmean_mse"] == pytest.approx([0.25, 0.01, 0.09])
    expected = draw_case_masks(VALIDATION, "random", 0.9, 2 + VALIDATION_SEED)  # the reference chooser's masks
    assert torch.equal(planted.masks[0], expected)


def test_the_spread_scale_brings_the_validation_spread_skill_to_one():
    """Closed form on the planted stand-in (std 0.2 everywhere, step s's error offsets[s] everywhere):
    at a chosen intermediate step the per-case spread/skill is 0.2 / |offset|, so the scale is
    |offset| / 0.2; when the members' average is chosen, its K-member correction √((K+1)/K) enters too."""
    step_two = choose_mean_steps({"m": (PlantedSteps([0.5, 0.1, 0.3]), 4)}, VALIDATION, ["random"], [0.9])
    assert step_two[("random", 0.9)]["m"]["spread_scale"] == pytest.approx(0.1 / 0.2)
    last = choose_mean_steps({"m": (PlantedSteps([0.5, 0.4, 0.3], std=0.1), 4)}, VALIDATION, ["random"], [0.9])
    assert last[("random", 0.9)]["m"]["chosen"] == 3
    assert last[("random", 0.9)]["m"]["spread_scale"] == pytest.approx(0.3 / (0.1 * np.sqrt(5 / 4)))
    # the mean of per-case ratios, not a pooled one: ratios 1 and 3 give 1 / 2
    assert spread_scale(np.array([1.0, 1.0]), np.array([1.0, 3.0])) == pytest.approx(0.5)
    # an exact mean, a missing case or one member (no spread) is left out; nothing left: unscaled
    assert spread_scale(np.array([0.0, np.nan, 4.0]), np.array([1.0, 1.0, 1.0])) == pytest.approx(2.0)
    assert spread_scale(np.array([1.0, 2.0]), np.array([0.0, 0.0])) == 1.0


def test_a_scaled_spread_recentres_the_members_on_the_mean_and_scales_each_deviation():
    """Invariants of DiffusionReconstructor.with_spread_scale(s) against the unscaled run (same seeds,
    the mean from step 1, not the members' average): std times s; the members' average moved to the
    mean and each member's deviation from it times s (member-by-member post-processing); the mean and
    every observed value unchanged; a non-positive scale is refused."""
    method = tiny_conditional(steps=3)
    obs, mask, valid = tiny_case()
    plain = method.with_mean_step(1).reconstruct(obs, mask, valid, samples=3, seed=4)
    scaled = method.with_mean_step(1).with_spread_scale(0.4).reconstruct(obs, mask, valid, samples=3, seed=4)
    assert scaled.spread_scale == 0.4 and plain.spread_scale is None
    torch.testing.assert_close(scaled.std, 0.4 * plain.std)
    torch.testing.assert_close(scaled.mean, plain.mean, rtol=0, atol=0)
    average = plain.members.mean(dim=1, keepdim=True)
    assert float((average[:, 0] - plain.mean).abs().max()) > 1e-3  # the step's mean is not the members'
    torch.testing.assert_close(scaled.members.mean(dim=1), plain.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scaled.members - scaled.members.mean(dim=1, keepdim=True),
                               0.4 * (plain.members - average), rtol=1e-5, atol=1e-6)
    observed = ((mask > 0.5) & (valid > 0.5)).expand_as(obs)
    for k in range(3):
        assert torch.equal(scaled.members[:, k][observed], obs[observed])
    with pytest.raises(FieldpaintError, match="positive"):
        method.with_spread_scale(0.0)


def test_the_calibrated_method_scores_spread_skill_one_on_its_own_validation_cases():
    """Second computation: the spread scale chosen by mean_steps_for on the tiny model, applied through
    with_mean_step and scored by evaluate's `score` on the same validation cases (same masks and
    seeds, so the same members), gives a mean spread/skill of 1 to rounding, where the unscaled
    method's is 1 / scale."""
    method = tiny_conditional(steps=3)
    validation = FieldSplit(torch.randn((3, 1, 16, 16), generator=gen(8)), torch.ones((3, 1, 16, 16)),
                            torch.arange(3))
    choice = mean_steps_for({"c": method}, "auto", validation, ["random"], [0.9], samples=3,
                            seed=0)[("random", 0.9)]["c"]
    masks = draw_case_masks(validation, "random", 0.9, VALIDATION_SEED)
    stats = FieldStats(("field",), (0.0,), (1.0,))

    def mean_spread_skill(scale):
        chosen = with_mean_step(method, choice["chosen"], choice["frames"], scale)
        rec = chosen.reconstruct(validation.x * masks, masks, validation.valid, samples=3, seed=VALIDATION_SEED)
        return np.mean([score(validation.x[i].double().numpy(), rec.mean[i].double().numpy(),
                              rec.std[i].double().numpy(), rec.members[i].double().numpy(), masks[i].numpy(),
                              validation.valid[i].numpy(), stats, mean_of_members=rec.mean_step is None)
                        ["spread_skill"] for i in range(3)])

    assert choice["spread_scale"] != pytest.approx(1.0, abs=0.05)  # the tiny model's members are miscalibrated
    assert mean_spread_skill(choice["spread_scale"]) == pytest.approx(1.0, rel=1e-4)
    assert mean_spread_skill(1.0) == pytest.approx(1.0 / choice["spread_scale"], rel=1e-4)


def test_member_frames_are_evenly_spaced_rolls_along_the_named_axes():
    assert [member_shift(k, 4, 8, 16, "x") for k in range(4)] == [(0, 0), (0, 4), (0, 8), (0, 12)]
    assert [member_shift(k, 3, 8, 16, "xy") for k in range(3)] == [(0, 0), (2, 5), (5, 10)]
    assert member_shift(2, 3, 8, 16, "fixed") == (0, 0)
    with pytest.raises(FieldpaintError, match="frames must be one of fixed, x, y, xy"):
        tiny_conditional().with_frames("z")


@pytest.mark.parametrize("frames", ["x", "xy"])
def test_a_member_in_a_rolled_frame_is_the_fixed_sampler_on_rolled_inputs_rolled_back(frames):
    """Second code path: member k drawn with frames is the fixed-frame member k (same generator) of the
    inputs rolled by member_shift(k), rolled back; member 0 is unchanged, observations stay exact and
    never-valid pixels 0, and the chosen step's mean is rolled back with the members."""
    method = tiny_conditional(steps=3)
    obs, mask, valid = tiny_case()
    K = 3
    rolled = method.with_frames(frames).with_mean_step(1).reconstruct(obs, mask, valid, samples=K, seed=4)
    fixed = method.with_mean_step(1)
    step_sum = torch.zeros_like(obs)
    for k in range(K):
        dy, dx = member_shift(k, K, 16, 16, frames)
        inputs = [torch.roll(a, (dy, dx), dims=(-2, -1)) for a in (obs, mask, valid)]
        _, means = fixed.step_means(*inputs, samples=K, seed=4)
        rec = fixed.reconstruct(*inputs, samples=K, seed=4)
        back = torch.roll(rec.members[:, k], (-dy, -dx), dims=(-2, -1))
        torch.testing.assert_close(rolled.members[:, k], back, rtol=0, atol=1e-5)
        assert k > 0 or torch.equal(rolled.members[:, 0], rec.members[:, 0])
    observed = ((mask > 0.5) & (valid > 0.5))
    assert torch.equal(rolled.mean[observed], obs[observed]) and (rolled.mean[valid < 0.5] == 0).all()
    assert torch.equal(rolled.members[:, 1][observed], obs[observed])
    assert not torch.allclose(rolled.mean, fixed.reconstruct(obs, mask, valid, samples=K, seed=4).mean)


class PlantedFrames(PlantedSteps):
    """PlantedSteps whose step offsets depend on the frames it is asked for."""

    def __init__(self, by_frames, frames="fixed"):
        super().__init__(by_frames[frames])
        self.by_frames = by_frames

    def with_frames(self, frames):
        return PlantedFrames(self.by_frames, frames)


def test_the_frames_are_chosen_with_the_step_and_a_tie_keeps_the_fixed_frame():
    assert frame_candidates((True, True)) == ("fixed", "x", "y")
    assert frame_candidates((False, True)) == ("fixed", "x") and frame_candidates((False, False)) == ("fixed",)
    planted = PlantedFrames({"fixed": [0.5, 0.3, 0.4], "x": [0.5, 0.2, 0.4], "y": [0.1, 0.6, 0.6]})
    choice = choose_mean_steps({"m": (planted, 4)}, VALIDATION, ["random"], [0.9],
                               frames=("fixed", "x", "y"))[("random", 0.9)]["m"]
    assert choice["frames"] == "y" and choice["chosen"] == 1
    assert choice["validation_gmean_mse"] == pytest.approx([0.01, 0.36, 0.36])
    assert choice["frames_validation_gmean_mse"] == pytest.approx({"fixed": 0.09, "x": 0.04, "y": 0.01})
    tie = PlantedFrames({"fixed": [0.5, 0.2], "x": [0.2, 0.5]})
    assert choose_mean_steps({"m": (tie, 4)}, VALIDATION, ["random"], [0.9],
                             frames=("fixed", "x"))[("random", 0.9)]["m"]["frames"] == "fixed"


def test_periodic_data_tries_the_frames_of_its_periodic_axes():
    """mean_steps_for on the tiny model: x-periodic data tries fixed and x, and records the one whose
    best step scored lower on the validation cases; non-periodic data tries the fixed frame only."""
    method = tiny_conditional(steps=3)
    validation = FieldSplit(torch.randn((3, 1, 16, 16), generator=gen(8)), torch.ones((3, 1, 16, 16)),
                            torch.arange(3))
    chosen = mean_steps_for({"c": method}, "auto", validation, ["random"], [0.9], samples=2, seed=0,
                            periodic=(False, True))[("random", 0.9)]["c"]
    tried = chosen["frames_validation_gmean_mse"]
    assert set(tried) == {"fixed", "x"} and chosen["frames"] == min(tried, key=lambda f: (tried[f], f != "fixed"))
    plain = mean_steps_for({"c": method}, "auto", validation, ["random"], [0.9], samples=2, seed=0)
    assert set(plain[("random", 0.9)]["c"]["frames_validation_gmean_mse"]) == {"fixed"}
    assert plain[("random", 0.9)]["c"]["frames_validation_gmean_mse"]["fixed"] == pytest.approx(tried["fixed"])
    # Naming the axes restricts the candidates to them; the fixed frame's validation error is the same.
    both = mean_steps_for({"c": method}, "auto", validation, ["random"], [0.9], samples=2, seed=0,
                          periodic=(True, True), frame_axes=())[("random", 0.9)]["c"]
    assert set(both["frames_validation_gmean_mse"]) == {"fixed"} and both["frames"] == "fixed"
    assert both["frames_validation_gmean_mse"]["fixed"] == pytest.approx(tried["fixed"])


def test_frame_candidates_follow_the_named_axes_and_refuse_an_axis_that_does_not_wrap():
    """The fixed frame first (a tie keeps it), then x before y whatever the order named; an axis the
    data is not periodic along would roll the field across its edges."""
    assert frame_candidates((True, True), ("x",)) == ("fixed", "x")
    assert frame_candidates((True, True), ("y", "x")) == frame_candidates((True, True)) == ("fixed", "x", "y")
    assert frame_candidates((True, True), ()) == ("fixed",)
    with pytest.raises(FieldpaintError, match="frame candidate 'y': the data is not periodic along y"):
        frame_candidates((False, True), ("y",))
    with pytest.raises(FieldpaintError, match="frame candidate 'z'"):
        frame_candidates((True, True), ("z",))


def test_the_report_names_the_chosen_frames_beside_the_other_candidates(tmp_path):
    """mean_step_table: a rolled choice shows its axis and the other candidates' validation MSE; a choice
    of an older mean_step.json, without frames, reads fixed."""
    from fieldpaint.report import mean_step_table

    choices = [{"mask": "tracks", "coverage": 0.95, "method": "c", "chosen": 2, "steps": 3, "frames": "x",
                "validation_gmean_mse": [0.7, 0.5, 0.6], "frames_validation_gmean_mse": {"fixed": 0.55, "x": 0.5,
                                                                                           "y": 0.8}},
               {"mask": "random", "coverage": 0.9, "method": "c", "chosen": 3, "steps": 3,
                "validation_gmean_mse": [0.3, 0.2, 0.1]}]
    (tmp_path / "mean_step.json").write_text(json.dumps(choices))
    rows = [line for line in mean_step_table(tmp_path) if line.startswith("| tracks") or line.startswith("| random")]
    assert rows[0] == "| tracks | 95 % | c | rolled along x (fixed: 0.55, y: 0.8) | 2 of 3 | 0.5 | 0.6 | none |"
    assert rows[1] == "| random | 90 % | c | fixed | the members' average | 0.1 | 0.1 | none |"


def test_spread_skill_drops_the_member_correction_for_a_step_mean():
    """score's spread/skill of a K-member ensemble carries the factor √((K+1)/K) (Fortin et al. 2014)
    only when the mean is the members' average."""
    rng = np.random.default_rng(0)
    truth, mean, std = rng.normal(size=(3, 1, 8, 8))
    members = rng.normal(size=(4, 1, 8, 8))
    mask, valid = np.zeros((1, 8, 8)), np.ones((1, 8, 8))
    stats = FieldStats(("a",), (0.0,), (1.0,))
    std = np.abs(std)
    averaged = score(truth, mean, std, members, mask, valid, stats)["spread_skill"]
    step = score(truth, mean, std, members, mask, valid, stats, mean_of_members=False)["spread_skill"]
    assert averaged == pytest.approx(step * np.sqrt(5 / 4))
    assert step == pytest.approx(spread_skill(mean, std, truth, mask[0] < 1))


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    return train_tiny_grf_run(tmp_path_factory.mktemp("mean_step"), "concat", n_test=4, seed=3)


def test_evaluate_chooses_a_step_per_group_and_scores_the_test_with_it(conditional_run, tmp_path):
    from fieldpaint.runs import load_run

    run = load_run(conditional_run / "run")
    out = evaluate_and_report(tmp_path / "auto", runs=[run], methods=["conditional-dpm"], families=["random"],
                              coverages=[0.5, 0.9], n=2, samples=2, sampler={"steps": 3}, reference="linear",
                              validation_fields=4, progress=False)
    choices = json.loads((out.parent / "mean_step.json").read_text())
    assert len(choices) == 2
    cases = pd.read_csv(out.parent / "cases.csv")
    for c in choices:
        scores = c["validation_gmean_mse"]
        assert len(scores) == 3 and c["chosen"] == min(range(1, 4), key=lambda s: (scores[s - 1], -s))
        rows = cases[(cases["method"] == "conditional-dpm") & (cases["coverage"] == c["coverage"])]
        recorded = rows["mean_step"].fillna(3).astype(int)  # empty: the members' average, step 3
        assert (recorded == c["chosen"]).all()
        assert c["spread_scale"] > 0 and c["spread_scale"] != 1.0  # two members of a one-epoch model: not calibrated
    assert "## Where the conditional models' means come from" in out.read_text()
    assert "| spread scale |" in out.read_text()

    fixed = evaluate_and_report(tmp_path / "fixed", runs=[run], methods=["conditional-dpm"], families=["random"],
                                coverages=[0.9], n=2, samples=2, sampler={"steps": 3}, reference="linear",
                                validation_fields=4, mean_step=1, progress=False)
    rows = pd.read_csv(fixed.parent / "cases.csv")
    assert (rows.loc[rows["method"] == "conditional-dpm", "mean_step"] == 1).all()
    members = evaluate_and_report(tmp_path / "members", runs=[run], methods=["conditional-dpm"], families=["random"],
                                  coverages=[0.9], n=2, samples=2, sampler={"steps": 3}, reference="linear",
                                  validation_fields=4, mean_step="members", progress=False)
    assert not (members.parent / "mean_step.json").exists()
    assert pd.read_csv(members.parent / "cases.csv")["mean_step"].isna().all()


def test_cli_mean_step_errors_are_one_line(conditional_run, tmp_path, capsys):
    base = ["evaluate", "--run", str(conditional_run / "run"), "--methods", "conditional-dpm", "--n", "2",
            "--masks", "random", "--coverages", "0.9", "--steps", "3", "--reference", "linear",
            "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a"), "--mean-step", "soon"]) == 2
    assert "auto, members or a sampling step" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--mean-step", "7"]) == 2
    assert "sampling step from 1 to 3" in capsys.readouterr().err
    assert not (tmp_path / "b" / "cases.csv").exists()
    assert main(base + ["--out", str(tmp_path / "c"), "--frame-candidates", "z"]) == 2
    assert "give auto, fixed or axes among x, y" in capsys.readouterr().err
    # the GRF file is not periodic: a rolled candidate is refused before any fit or sample
    assert main(base + ["--out", str(tmp_path / "d"), "--frame-candidates", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "frame candidate 'x': the data is not periodic along x" in err and "\n" not in err
    assert not (tmp_path / "d" / "cases.csv").exists()


def test_inpaint_records_the_mean_step(conditional_run, tmp_path, capsys):
    import xarray as xr

    with xr.open_dataset(conditional_run / "grf.nc") as ds:
        obs = ds.isel(sample=slice(0, 2)).load()
    hidden = np.random.default_rng(0).random(obs["field"].shape) < 0.8
    obs["field"] = obs["field"].where(~hidden)
    obs.to_netcdf(tmp_path / "obs.nc")
    args = ["inpaint", "--checkpoint", str(conditional_run / "run"), "--input", str(tmp_path / "obs.nc"),
            "--method", "conditional-dpm", "--steps", "3", "--samples", "2", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a.nc"), "--mean-step", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "b.nc")]) == 0
    with xr.open_dataset(tmp_path / "a.nc") as a, xr.open_dataset(tmp_path / "b.nc") as b:
        assert a.attrs["mean_step"] == 1 and "mean_step" not in b.attrs
        from fieldpaint.runtime import bf16_native

        assert a.attrs["precision"] == ("bf16" if bf16_native(torch.device("cpu"))[0] else "fp32")  # auto
        np.testing.assert_allclose(a["field_members"], b["field_members"], rtol=0, atol=0)
        np.testing.assert_allclose(b["field"], b["field_members"].mean("realization"), rtol=1e-5, atol=1e-5)
        assert not np.allclose(a["field"], b["field"])
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "c.nc"), "--mean-step", "4"]) == 2
    assert "sampling step from 1 to 3" in capsys.readouterr().err
    assert not (tmp_path / "c.nc").exists()
    # --frames x: member 0 is drawn in the field's own frame, the others rolled; recorded in the file
    assert main(args + ["--out", str(tmp_path / "x.nc"), "--frames", "x"]) == 0
    with xr.open_dataset(tmp_path / "x.nc") as x, xr.open_dataset(tmp_path / "b.nc") as b:
        assert x.attrs["frames"] == "x" and "frames" not in b.attrs
        members = x["field_members"].isel(realization=0)
        np.testing.assert_allclose(members, b["field_members"].isel(realization=0), rtol=0, atol=1e-5)
        assert not np.allclose(x["field_members"].isel(realization=1), b["field_members"].isel(realization=1))
    capsys.readouterr()
    assert main(args[:5] + ["--method", "linear", "--out", str(tmp_path / "l.nc"), "--frames", "x"]) == 2
    assert "--frames applies to diffusion methods" in capsys.readouterr().err
    # --spread-scale 0.5 on the members' average (this model's default mean): the same mean, each member's
    # deviation from it and the std halved (in physical units too: the normalisation's offset cancels),
    # recorded in the file
    assert main(args + ["--out", str(tmp_path / "s.nc"), "--spread-scale", "0.5"]) == 0
    with xr.open_dataset(tmp_path / "s.nc") as s, xr.open_dataset(tmp_path / "b.nc") as b:
        assert s.attrs["spread_scale"] == 0.5 and "spread_scale" not in b.attrs
        np.testing.assert_allclose(s["field"], b["field"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s["field_std"], 0.5 * b["field_std"], rtol=1e-5, atol=1e-6)
        deviation = b["field_members"] - b["field_members"].mean("realization")
        np.testing.assert_allclose(s["field_members"] - s["field_members"].mean("realization"), 0.5 * deviation,
                                   rtol=1e-4, atol=1e-5)
    for extra, message in [(["--spread-scale", "0"], "--spread-scale"),
                           (["--method", "linear", "--spread-scale", "0.5"], "--spread-scale applies to diffusion")]:
        capsys.readouterr()
        assert main((args[:5] if "linear" in extra else args) + ["--out", str(tmp_path / "e.nc")] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and not (tmp_path / "e.nc").exists()


def test_inpaint_reads_a_terminal_trained_model_at_step_1(tmp_path, capsys):
    """A model trained with diffusion.terminal_fraction has its mean from step 1 by default (its
    trained regression); `--mean-step members` gives the members' own average, the same members."""
    import xarray as xr

    root = train_tiny_grf_run(tmp_path, "concat", n_test=2, seed=4, terminal_fraction=0.5)
    with xr.open_dataset(root / "grf.nc") as ds:
        obs = ds.isel(sample=slice(0, 2)).load()
    obs["field"] = obs["field"].where(np.random.default_rng(1).random(obs["field"].shape) >= 0.9)
    obs.to_netcdf(tmp_path / "obs.nc")
    args = ["inpaint", "--checkpoint", str(root / "run"), "--input", str(tmp_path / "obs.nc"),
            "--method", "conditional-dpm", "--steps", "3", "--samples", "2", "--no-progress"]
    outputs = {name: tmp_path / f"{name}.nc" for name in ("default", "one", "members")}
    assert main(args + ["--out", str(outputs["default"])]) == 0
    assert main(args + ["--out", str(outputs["one"]), "--mean-step", "1"]) == 0
    assert main(args + ["--out", str(outputs["members"]), "--mean-step", "members"]) == 0
    ds = {name: xr.open_dataset(path) for name, path in outputs.items()}
    try:
        assert ds["default"].attrs["mean_step"] == 1 and "mean_step" not in ds["members"].attrs
        np.testing.assert_array_equal(ds["default"]["field"], ds["one"]["field"])
        np.testing.assert_array_equal(ds["default"]["field_members"], ds["members"]["field_members"])
        np.testing.assert_allclose(ds["members"]["field"], ds["members"]["field_members"].mean("realization"),
                                   rtol=1e-5, atol=1e-5)
    finally:
        for d in ds.values():
            d.close()
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "x.nc"), "--mean-step", "auto"]) == 2  # no validation cases here
    assert "members or a sampling step" in capsys.readouterr().err


def test_a_conditional_reference_keeps_its_mean_step(conditional_run, tmp_path):
    """--reference conditional-dpm: its own rows and the kriging-named reference rows both use the step."""
    from fieldpaint.runs import load_run

    out = evaluate_and_report(tmp_path / "ref", runs=[load_run(conditional_run / "run")],
                              methods=["conditional-dpm"], families=["random"], coverages=[0.9], n=2, samples=2,
                              sampler={"steps": 3}, reference="conditional-dpm", mean_step=1, progress=False)
    rows = pd.read_csv(out.parent / "cases.csv")
    assert (rows["mean_step"] == 1).all() and set(rows["method"]) == {"conditional-dpm", "kriging"}


def test_a_mean_step_without_a_conditional_method_is_refused(conditional_run, tmp_path, capsys):
    assert main(["evaluate", "--run", str(conditional_run / "run"), "--methods", "linear", "--n", "2",
                 "--masks", "random", "--coverages", "0.9", "--reference", "linear", "--mean-step", "2",
                 "--out", str(tmp_path / "e"), "--no-progress"]) == 2
    assert "none is evaluated" in capsys.readouterr().err
    assert main(["inpaint", "--checkpoint", str(conditional_run / "run"), "--input", str(conditional_run / "grf.nc"),
                 "--method", "gp", "--mean-step", "2", "--out", str(tmp_path / "g.nc")]) == 2
    assert "applies to conditional diffusion methods" in capsys.readouterr().err
    assert not (tmp_path / "g.nc").exists()
