"""Typed errors whose messages are one line that names the problem."""


class NasDeployError(Exception):
    """Base class of every error nasdeploy raises on purpose (the CLI prints these as one line)."""


class GenotypeError(NasDeployError, ValueError):
    """A genotype is malformed, unknown or of the wrong kind."""


class ConfigError(NasDeployError, ValueError):
    """A configuration file or value is invalid."""


class DataError(NasDeployError):
    """A dataset is missing or not in the expected layout."""


class LimitError(NasDeployError, ValueError):
    """An input is larger or deeper than a stated limit (nasdeploy.utils.limits), checked before it is allocated."""


class InputSizeError(NasDeployError, ValueError):
    """A network got an input of a size it cannot take."""


class MissingDependencyError(NasDeployError, ImportError):
    """An optional dependency is needed for this feature but is not installed."""


class ExportError(NasDeployError):
    """An export step failed or its output did not match the source model."""


class CheckpointError(NasDeployError):
    """A checkpoint is missing, unreadable or does not fit the model."""
