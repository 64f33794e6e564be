"""Errors caused by the user's input: configs, data files, checkpoints, command lines.

The bottom of the house: every layer raises these, and the command line (the top) shows any of
:data:`USER_ERRORS` as one clear line with no traceback.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and the allowed values."""


class UsageError(ValueError):
    """A command line is malformed: an unknown flag, a missing argument."""


class DataError(Exception):
    """A dataset file is missing, damaged, unreadable or cannot be fetched."""


class MissingFilesError(DataError):
    """Required files are not in the data root (and were not downloaded)."""


class CorruptFileError(DataError):
    """A file is present but its md5 (or content) is not the official one."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, or not a bnnrepro checkpoint."""


class RunError(ValueError):
    """A run directory (or a list of them) is missing, unreadable or not a run."""


class RunLocked(RunError):
    """Another live process is writing the run directory; the message names it (pid, host, command)."""


class StorageError(RuntimeError):
    """A write failed because the disk (or the quota) is full, or the device failed; the previous file is kept."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


class PackError(ValueError):
    """The model has a layer (named in the message) the packed engine cannot run exactly."""


class TargetsError(ValueError):
    """A table targets file is malformed; the message names the file, the row and the field."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, UsageError, DataError, CheckpointError, RunError, StorageError, TrainingDiverged, PackError,
    TargetsError,
    FileNotFoundError, FileExistsError, PermissionError, ValueError)
