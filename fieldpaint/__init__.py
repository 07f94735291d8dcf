"""fieldpaint: diffusion models that reconstruct 2-D gridded fields from sparse observations."""

__version__ = "0.1.0"
