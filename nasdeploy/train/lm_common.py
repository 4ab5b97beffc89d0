"""Deprecated location: moved to `nasdeploy.tasks.language_model` (this re-export goes away in the next release)."""

from nasdeploy.utils.deprecation import reexport_moved

reexport_moved(globals(), "nasdeploy.train.lm_common", "nasdeploy.tasks.language_model")
