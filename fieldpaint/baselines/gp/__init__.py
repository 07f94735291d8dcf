"""Gaussian-process regression (kriging): the baseline the diffusion models must beat.

Each (field, channel) is a GP on its observed pixels, coordinates in pixels:

    y(x) = trend(x) + m + f(x) + eps,   f ~ GP(0, s2 k(|(x - x') / (ly, lx)|)),   eps ~ N(0, noise)

k is scikit-learn's Matérn (nu 0.5 / 1.5 / 2.5) or RBF with one length scale per axis (ARD),
periodised along axes on which the field wraps. Modules, in the order a field passes them:

  kernels.py       Kernel spec, correlations, lag tables (periodic images), Cholesky with jitter
  likelihood.py    log marginal likelihood, its profiled form and gradient (R&W 2006 ch. 2, 5)
  bfgs.py          batched projected BFGS in a box (general)
  observations.py  padded observation batches, design points, the training-mean trend
  fit.py           hyperparameters per field or per data set by maximum marginal likelihood
  predict.py       exact or local (nearest-neighbour) kriging
  reconstructor.py GPReconstructor ('per-field', 'dataset', 'oracle') and oracle_kernel
"""

from fieldpaint.baselines.gp.bfgs import bfgs
from fieldpaint.baselines.gp.fit import (MIN_FIT_POINTS, fit_dataset_gp, fit_gp, log_bounds,
                                         nus)
from fieldpaint.baselines.gp.kernels import (DTYPE, JITTERS, NUS, Family, Kernel, cholesky_jitter,
                                             correlation, correlation_table, gather_table,
                                             grid_kernel_matrix, kernel_matrix, lag_index,
                                             radial_derivative, scaled_distance)
from fieldpaint.baselines.gp.likelihood import (LOG_2PI, lml_gradient_terms,
                                                log_marginal_likelihood, profile_lml,
                                                profile_terms)
from fieldpaint.baselines.gp.observations import (design_points, mean_field, observations, pack,
                                                  subsample)
from fieldpaint.baselines.gp.predict import MeanMode, gp_predict, kernel_rows
from fieldpaint.baselines.gp.reconstructor import (ORACLE_NUGGET, GPReconstructor,
                                                   default_device, oracle_kernel)

_subsample = subsample  # the old private name (benchmarks/gp.py used it)

__all__ = ["DTYPE", "JITTERS", "LOG_2PI", "MIN_FIT_POINTS", "NUS", "ORACLE_NUGGET", "Family",
           "GPReconstructor", "Kernel", "MeanMode", "bfgs", "cholesky_jitter", "correlation",
           "correlation_table", "default_device", "design_points", "fit_dataset_gp", "fit_gp",
           "gather_table", "gp_predict", "grid_kernel_matrix", "kernel_matrix", "kernel_rows",
           "lag_index", "lml_gradient_terms", "log_bounds", "log_marginal_likelihood",
           "mean_field", "nus", "observations", "oracle_kernel", "pack", "profile_lml",
           "profile_terms", "radial_derivative", "scaled_distance", "subsample"]
