"""Deprecated location: moved to `nasdeploy.spaces.autodeeplab_decode` (this re-export goes away in the next release)."""

from nasdeploy.utils.deprecation import reexport_moved

reexport_moved(globals(), "nasdeploy.search.autodeeplab_decode", "nasdeploy.spaces.autodeeplab_decode")
