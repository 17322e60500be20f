"""The errors a user can fix: each message says what is wrong and what to do. The CLI prints one line and exits 2."""


class UserError(Exception):
    """Bad input, caught before any work starts."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work."""


class DatasetError(UserError, RuntimeError):
    """The dataset is missing or does not fit the environment."""


class CheckpointError(UserError, RuntimeError):
    """A run dir's checkpoint cannot be read."""


class TrackingError(UserError, RuntimeError):
    """The MLflow store cannot be reached or opened."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss or parameter: the run stops, FAILED, with its last finite checkpoint kept.

    Not a user error (nothing was wrong before the work started), so the CLI exits 3, not 2.
    """
