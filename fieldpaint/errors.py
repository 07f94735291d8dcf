"""User-facing errors. The CLI turns each into one line on stderr and exit status 2."""


class FieldpaintError(Exception):
    """Bad input from the user: a file, a value, a config. Never a bug in fieldpaint."""


class ConfigError(FieldpaintError):
    """An unknown key, a wrong type or an impossible value in a config."""


class DataError(FieldpaintError):
    """A dataset that cannot be used: missing file or variable, bad shape, NaN/inf where none may be."""


class CheckpointError(FieldpaintError):
    """A missing, truncated or incompatible checkpoint."""


class UsageError(FieldpaintError):
    """A command line argparse rejects: an unknown option, a missing argument, a value of the wrong kind."""
