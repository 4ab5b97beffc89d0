"""Deprecated location: moved to `nasdeploy.spaces.darts_cnn_derive` (this re-export goes away in the next release)."""

from nasdeploy.utils.deprecation import reexport_moved

reexport_moved(globals(), "nasdeploy.search.derive", "nasdeploy.spaces.darts_cnn_derive")
