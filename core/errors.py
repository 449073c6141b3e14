"""Errors a user can cause; the app and the CLI show their message, never a traceback."""


class PoisonLabError(Exception):
    """Base class: the message is meant for the analyst, so it says what to do."""


class ConfigError(PoisonLabError, ValueError):
    """A parameter is out of range, of the wrong type, or inconsistent with the data."""


class DataError(PoisonLabError):
    """The GTSRB data cannot be found or read."""


class ArtifactError(PoisonLabError):
    """A cached artifact is damaged or incomplete; callers recompute it."""


class ClusterError(PoisonLabError):
    """The Ray cluster a study was pointed at cannot be reached or joined."""
