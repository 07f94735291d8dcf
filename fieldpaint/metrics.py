"""Scores of one reconstruction against the truth, on hidden valid pixels only.

Every function takes one case: fields (C, H, W) as numpy arrays and a boolean `scored` (H, W) map
of the pixels that count (hidden and valid). Pure functions, numpy only.
"""

from __future__ import annotations

import math

import numpy as np

SQRT_PI = math.sqrt(math.pi)


def scored_pixels(mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pixels that are scored: valid and hidden. mask/valid (1, H, W) or (H, W) 0/1 -> bool (H, W)."""
    return (np.asarray(valid).reshape(np.shape(valid)[-2:]) > 0.5) & (np.asarray(mask).reshape(np.shape(mask)[-2:]) < 0.5)


def mse(pred: np.ndarray, truth: np.ndarray, scored: np.ndarray) -> float:
    return float(np.mean((pred[:, scored] - truth[:, scored]) ** 2))


def mae(pred: np.ndarray, truth: np.ndarray, scored: np.ndarray) -> float:
    return float(np.mean(np.abs(pred[:, scored] - truth[:, scored])))


def gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of N(mean, std²) at `truth`, elementwise (Gneiting & Raftery 2007, eq. 21):
    σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π] with z = (y − μ)/σ; |y − μ| when σ = 0."""
    from scipy.special import ndtr

    std = np.asarray(std, dtype=np.float64)
    err = np.asarray(truth, dtype=np.float64) - mean
    safe = np.where(std > 0, std, 1.0)
    z = err / safe
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    crps = safe * (z * (2 * ndtr(z) - 1) + 2 * pdf - 1 / SQRT_PI)
    return np.where(std > 0, crps, np.abs(err))


def ensemble_crps(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fair (unbiased) ensemble CRPS, elementwise over (K, ...) members (Ferro 2014; Zamo & Naveau 2018):
    mean_k |x_k − y| − Σ_{k,l} |x_k − x_l| / (2 K (K − 1)). Computed by sorting, O(K log K)."""
    k = members.shape[0]
    skill = np.mean(np.abs(members - truth[None]), axis=0)
    if k == 1:
        return skill
    x = np.sort(members, axis=0)
    # Σ_{k,l}|x_k − x_l| = 2 Σ_i (2i − K − 1) x_(i) for sorted x (i = 1..K)
    weights = (2 * np.arange(1, k + 1) - k - 1).reshape((k,) + (1,) * (members.ndim - 1))
    spread = 2 * np.sum(weights * x, axis=0)
    return skill - spread / (2 * k * (k - 1))


def crps(truth: np.ndarray, scored: np.ndarray, *, mean: np.ndarray, std: np.ndarray,
         members: np.ndarray | None = None) -> float:
    """Mean CRPS over scored pixels: the ensemble estimator for ensembles, else the Gaussian form."""
    if members is not None and members.shape[0] > 1:
        return float(np.mean(ensemble_crps(members[:, :, scored], truth[:, scored])))
    return float(np.mean(gaussian_crps(mean[:, scored], std[:, scored], truth[:, scored])))


def spread_skill(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, scored: np.ndarray,
                 members: int | None = None) -> float:
    """RMS predicted spread / RMSE of the mean; 1 for a calibrated forecast.

    For a K-member ensemble the spread is scaled by sqrt((K + 1) / K) (Fortin et al. 2014), so a
    perfect ensemble also scores 1. NaN when the mean is exact."""
    rmse = math.sqrt(mse(mean, truth, scored))
    spread = math.sqrt(float(np.mean(std[:, scored] ** 2)))
    if members is not None and members > 1:
        spread *= math.sqrt((members + 1) / members)
    return spread / rmse if rmse > 0 else float("nan")


def radial_spectrum(field: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum of (C, H, W), summed over channels, in bins of physical
    wavenumber.

    |k| = sqrt((ky/H)² + (kx/W)²) in cycles per pixel, so one cycle across the grid's width and one
    across its height are told apart on a non-square grid. Bins are of equal width dk = 1/max(H, W)
    (the finer of the two axes' frequency steps), bin i holding (i - 1/2) dk <= |k| < (i + 1/2) dk:
    bin i is i cycles across the longer side, bin 0 is the mean alone, and the first non-zero mode of
    either axis (|k| >= dk) lands in a scored bin >= 1. Bins 0 .. max(H, W)//2 reach the Nyquist
    frequency 1/2 (the corners beyond it are left out). On a square N x N grid this is the usual
    integer-wavenumber binning.
    """
    c, h, w = field.shape
    power = np.abs(np.fft.fft2(field - field.mean(axis=(1, 2), keepdims=True))) ** 2 / (h * w)
    k = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])  # cycles per pixel
    n = max(h, w) // 2 + 1
    bins = np.floor(k * max(h, w) + 0.5).astype(int)  # round half up: edges at (i ± 1/2) dk
    total = np.bincount(bins.ravel(), weights=power.sum(axis=0).ravel(), minlength=n)[:n]
    count = np.bincount(bins.ravel(), minlength=n)[:n]
    return total / np.maximum(count, 1)


def spectrum_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute log10 ratio of the radially averaged spectra over bins >= 1 (every non-zero mode
    up to the Nyquist frequency; see `radial_spectrum`): 0 when the reconstruction has the truth's
    energy at every scale; large when it is too smooth or noisy."""
    a, b = radial_spectrum(pred)[1:], radial_spectrum(truth)[1:]
    eps = 1e-12 * max(b.max(), 1e-30)
    return float(np.mean(np.abs(np.log10((a + eps) / (b + eps)))))
