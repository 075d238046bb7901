"""Errors a user can cause. The CLI prints them as one line, never a traceback."""

from __future__ import annotations


class SegbenchError(Exception):
    """Base class: a problem with the user's input or environment, shown as one line."""

    exit_code = 2


class UnknownNameError(SegbenchError, KeyError):
    """An unknown method, dataset, metric, recipe or option name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(SegbenchError, ValueError):
    """A bad ``--set`` override, recipe or impossible method/dataset pairing."""


class DataError(SegbenchError):
    """A dataset that is missing, malformed or inconsistent."""


class PluginError(SegbenchError):
    """A plugin that failed to load or register (raised only in strict mode)."""


class RunFailed(SegbenchError):
    """A run that stopped (non-finite loss, ...); its record says ``failed``."""

    exit_code = 1


class OfflineError(SegbenchError):
    """Pretrained weights were asked for but cannot be downloaded."""


class WriteError(SegbenchError, OSError):
    """A file segbench writes (record, checkpoint, weights, table) could not be written: the path and the reason."""

