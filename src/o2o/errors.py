"""The errors a user can fix: each message says what is wrong and what to do. The CLI prints one line and exits 2."""
import argparse


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


class DiskFull(UserError, OSError):
    """A write found its disk full: the run stops with one line, its last good checkpoint and the store kept."""


def disk_full(err: BaseException) -> bool:
    """An error (or one it was raised from) that says the disk or the database is full."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if "No space left on device" in text or "database or disk is full" in text or "file write failed" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


class NoMatchingRuns(UserError):
    """A report or a sweep summary found no run to compare."""


class OneLineParser(argparse.ArgumentParser):
    """The command-line tools' parser: a usage mistake is one ``error:`` line and exit 2, not argparse's usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")
