"""nasdeploy: neural architecture search all the way to deployment."""

from nasdeploy._version import __version__

__all__ = ["__version__"]
