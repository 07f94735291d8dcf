"""Baselines the diffusion models are measured against, each a Reconstructor (see reconstruct.py):
kriging (gp/) and nearest / linear / Laplace interpolation (interp.py)."""

from fieldpaint.baselines.gp import (GPReconstructor, Kernel, fit_dataset_gp, fit_gp, gp_predict,
                                     mean_field, oracle_kernel)
from fieldpaint.baselines.interp import InterpReconstructor

__all__ = ["GPReconstructor", "InterpReconstructor", "Kernel", "fit_dataset_gp", "fit_gp",
           "gp_predict", "mean_field", "oracle_kernel"]
