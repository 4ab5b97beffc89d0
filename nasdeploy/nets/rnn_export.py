"""Deprecated location: moved to `nasdeploy.export.language_model` (this re-export goes away in the next release)."""

from nasdeploy.utils.deprecation import reexport_moved

reexport_moved(globals(), "nasdeploy.nets.rnn_export", "nasdeploy.export.language_model")
