"""fieldpaint: diffusion models for reconstructing 2-D gridded fields from sparse observations,
measured against kriging. The notebook API is `fieldpaint.reconstructor` (see fieldpaint.api)."""

__version__ = "0.2.0"


def __getattr__(name: str):
    if name in ("reconstructor", "FieldReconstructor"):  # imported on first use: `import fieldpaint` stays light
        from fieldpaint import api

        return getattr(api, name)
    raise AttributeError(f"module 'fieldpaint' has no attribute {name!r}")


__all__ = ["FieldReconstructor", "__version__", "reconstructor"]
