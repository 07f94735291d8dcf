"""Matérn Gaussian random fields, sampled exactly by circulant embedding.

This is the Gaussian process's home turf: with the true kernel a GP is the optimal (posterior
mean) reconstruction, so a diffusion model can at best tie it here.

Method (Wood & Chan 1994, "Simulation of stationary Gaussian processes in [0,1]^d";
Dietrich & Newsam 1997, "Fast and exact simulation of stationary Gaussian processes through
circulant embedding of the covariance matrix"):

1. Lay the isotropic covariance c(r) on a torus of M x N pixels, M >= 2(H-1), N >= 2(W-1),
   using wrap-around distances, so every lag inside the H x W crop is represented exactly.
2. The covariance matrix on the torus is block-circulant; its eigenvalues are lambda = FFT2(c).
   If any is negative beyond round-off the embedding is not a valid covariance: grow the torus.
3. With eps complex standard normal (real and imaginary parts iid N(0, 1)),
   y = FFT2(sqrt(lambda / (M N)) * eps) has Re(y), Im(y) independent with covariance c on the
   torus; the H x W corner of each is an exact sample of the field.

Kernels use scikit-learn's Matern parametrisation (nu = inf is its RBF limit); r is in pixels.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from fieldpaint.errors import FieldpaintError

MATERN_NUS = (0.5, 1.5, 2.5, math.inf)  # closed forms exist for these; inf is the RBF limit

# An eigenvalue above -EIGEN_RTOL * max(lambda) counts as round-off and is clipped to zero.
EIGEN_RTOL = 1e-10
# Largest torus (in pixels) the embedding may grow to: 2**24 complex128 values is 256 MiB.
MAX_TORUS_PIXELS = 2**24
# Noise for this many bytes of complex128 FFT input is drawn and transformed at once.
CHUNK_BYTES = 64 * 2**20


# ------------------------------------------------------------------------------------------
# validation


def check_kernel(nu: float, length_scale: float, variance: float = 1.0) -> None:
    """Raise FieldpaintError for a kernel the closed forms do not cover."""
    if not isinstance(nu, (int, float)) or float(nu) not in MATERN_NUS:
        raise FieldpaintError(f"nu must be one of 0.5, 1.5, 2.5, inf; got {nu!r}")
    for name, value in (("length_scale", length_scale), ("variance", variance)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise FieldpaintError(f"{name} must be a finite number > 0, got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FieldpaintError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------------
# the kernel and its circulant embedding


def matern_covariance(
    r: np.ndarray, nu: float, length_scale: float, variance: float = 1.0
) -> np.ndarray:
    """Matérn covariance at distances r (any shape), as sklearn.gaussian_process.kernels.Matern.

    nu=0.5: s2 exp(-d);  nu=1.5: s2 (1 + d) exp(-d) with d = sqrt(3) r / l;
    nu=2.5: s2 (1 + d + d^2/3) exp(-d) with d = sqrt(5) r / l;  nu=inf: s2 exp(-r^2 / (2 l^2)).
    """
    check_kernel(nu, length_scale, variance)
    r = np.abs(np.asarray(r, dtype=np.float64))
    nu = float(nu)
    if nu == 0.5:
        cov = np.exp(-r / length_scale)
    elif nu == 1.5:
        d = math.sqrt(3.0) * r / length_scale
        cov = (1.0 + d) * np.exp(-d)
    elif nu == 2.5:
        d = math.sqrt(5.0) * r / length_scale
        cov = (1.0 + d + d**2 / 3.0) * np.exp(-d)
    else:
        cov = np.exp(-0.5 * (r / length_scale) ** 2)
    return variance * cov


def torus_distances(rows: int, cols: int) -> np.ndarray:
    """(rows, cols) Euclidean distance from pixel (0, 0) on a torus, in pixels (wrap-around)."""
    dy = np.minimum(np.arange(rows), rows - np.arange(rows)).astype(np.float64)
    dx = np.minimum(np.arange(cols), cols - np.arange(cols)).astype(np.float64)
    return np.hypot(dy[:, None], dx[None, :])


def minimal_torus(height: int, width: int) -> tuple[int, int]:
    """Smallest FFT-friendly torus holding every lag of an H x W crop: at least 2(H-1) x 2(W-1)."""
    return (
        scipy.fft.next_fast_len(max(2 * (height - 1), 1)),
        scipy.fft.next_fast_len(max(2 * (width - 1), 1)),
    )


def torus_eigenvalues(
    rows: int, cols: int, nu: float, length_scale: float, variance: float = 1.0
) -> np.ndarray:
    """Eigenvalues FFT2(c) of the block-circulant covariance on a rows x cols torus.

    Real because c is even (c[i] = c[M - i]), so the imaginary part is round-off.
    """
    cov = matern_covariance(torus_distances(rows, cols), nu, length_scale, variance)
    return scipy.fft.fft2(cov).real


def circulant_embedding_eigenvalues(
    height: int,
    width: int,
    *,
    nu: float = 1.5,
    length_scale: float = 8.0,
    variance: float = 1.0,
) -> np.ndarray:
    """Eigenvalues of the smallest valid embedding, grown 1.5x per axis until none is negative.

    Returned unclipped, shape (M, N) of the torus; round-off negatives (> -EIGEN_RTOL * max)
    remain for the caller to inspect. Raises FieldpaintError if the torus would get too large.
    """
    _check_count("height", height, 1)
    _check_count("width", width, 1)
    check_kernel(nu, length_scale, variance)
    rows, cols = minimal_torus(height, width)
    while rows * cols <= MAX_TORUS_PIXELS:
        eig = torus_eigenvalues(rows, cols, nu, length_scale, variance)
        if eig.min() >= -EIGEN_RTOL * eig.max():
            return eig
        rows = scipy.fft.next_fast_len(math.ceil(1.5 * rows))
        cols = scipy.fft.next_fast_len(math.ceil(1.5 * cols))
    raise FieldpaintError(
        f"length_scale={length_scale} is too large for an exact GRF on {height}x{width} "
        f"(circulant embedding would need a torus over {MAX_TORUS_PIXELS} pixels)"
    )


def embedding_sqrt(eigenvalues: np.ndarray) -> np.ndarray:
    """sqrt(lambda / (M N)) with round-off negatives clipped: the spectral filter for the noise."""
    rows, cols = eigenvalues.shape
    return np.sqrt(np.clip(eigenvalues, 0.0, None) / (rows * cols))


def fields_from_noise(
    sqrt_eig: np.ndarray, noise: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Two independent fields per complex noise array: (B, M, N) complex -> (2B, H, W) float64.

    Output order is [Re(y_0), Im(y_0), Re(y_1), Im(y_1), ...] with y_b = FFT2(sqrt_eig * eps_b).
    """
    y = scipy.fft.fft2(sqrt_eig * noise, axes=(-2, -1))[:, :height, :width]
    return np.stack([y.real, y.imag], axis=1).reshape(-1, height, width)


# ------------------------------------------------------------------------------------------
# sampling


def sample_matern_grf(
    n: int,
    channels: int,
    height: int,
    width: int,
    *,
    nu: float = 1.5,
    length_scale: float = 8.0,
    variance: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """(n, channels, height, width) float32 zero-mean Matérn fields; channels are independent.

    Computed in float64. The noise stream is consumed in a fixed order (one complex torus per
    pair of fields), so sample i depends only on the seed, never on n or on chunking.
    """
    _check_count("n", n, 0)
    _check_count("channels", channels, 1)
    _check_count("seed", seed, 0)
    sqrt_eig = embedding_sqrt(
        circulant_embedding_eigenvalues(
            height, width, nu=nu, length_scale=length_scale, variance=variance
        )
    )
    rows, cols = sqrt_eig.shape
    rng = np.random.default_rng(seed)
    n_fields = n * channels
    n_tori = (n_fields + 1) // 2  # each complex torus gives two fields
    chunk = max(1, CHUNK_BYTES // (16 * rows * cols))

    out = np.empty((2 * n_tori, height, width), dtype=np.float32)
    for start in range(0, n_tori, chunk):
        size = min(chunk, n_tori - start)
        parts = rng.standard_normal((size, 2, rows, cols))
        noise = parts[:, 0] + 1j * parts[:, 1]
        out[2 * start : 2 * (start + size)] = fields_from_noise(sqrt_eig, noise, height, width)
    return out[:n_fields].reshape(n, channels, height, width)


def channel_names(channels: int) -> list[str]:
    """'field' for a single channel, else 'f0', 'f1', ..."""
    return ["field"] if channels == 1 else [f"f{c}" for c in range(channels)]


def generate_grf(
    n_train: int = 9180,
    n_test: int = 1020,
    height: int = 64,
    width: int = 128,
    *,
    channels: int = 1,
    nu: float = 1.5,
    length_scale: float = 8.0,
    variance: float = 1.0,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """A Matérn GRF data set: ({name: (N, H, W) float32}, split, attrs); 'train' rows come first.

    attrs are flat str/int/float values (NetCDF attributes) from which the evaluation rebuilds
    the exact kernel for the oracle GP: Matern(nu, length_scale [pixels]) * variance, mean 0.
    """
    _check_count("n_train", n_train, 0)
    _check_count("n_test", n_test, 0)
    if n_train + n_test < 1:
        raise FieldpaintError("n_train + n_test must be at least 1")
    fields = sample_matern_grf(
        n_train + n_test, channels, height, width,
        nu=nu, length_scale=length_scale, variance=variance, seed=seed,
    )
    data = {
        name: np.ascontiguousarray(fields[:, c]) for c, name in enumerate(channel_names(channels))
    }
    split = np.array(["train"] * n_train + ["test"] * n_test)
    attrs = {
        "generator": "grf",
        "kernel": "matern",
        "nu": float(nu),
        "length_scale": float(length_scale),
        "length_scale_units": "pixels",
        "variance": float(variance),
        "mean": 0.0,
        "seed": int(seed),
        "channels": int(channels),
        "method": "circulant embedding (Dietrich & Newsam 1997)",
        "periodic": "none",  # a crop of a larger torus, so it does not wrap around (data.periodic = "auto")
    }
    return data, split, attrs
