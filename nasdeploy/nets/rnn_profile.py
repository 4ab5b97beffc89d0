"""Deprecated location: moved to `nasdeploy.profile.language_model` (this re-export goes away in the next release)."""

from nasdeploy.utils.deprecation import reexport_moved

reexport_moved(globals(), "nasdeploy.nets.rnn_profile", "nasdeploy.profile.language_model")
