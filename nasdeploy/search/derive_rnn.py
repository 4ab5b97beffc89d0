"""Deprecated location: moved to `nasdeploy.spaces.darts_rnn_derive` (this re-export goes away in the next release)."""

from nasdeploy.utils.deprecation import reexport_moved

reexport_moved(globals(), "nasdeploy.search.derive_rnn", "nasdeploy.spaces.darts_rnn_derive")
