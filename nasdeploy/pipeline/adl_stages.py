"""Deprecated location: moved to `nasdeploy.pipeline.autodeeplab_stages` (this re-export goes away in the next release)."""

from nasdeploy.utils.deprecation import reexport_moved

reexport_moved(globals(), "nasdeploy.pipeline.adl_stages", "nasdeploy.pipeline.autodeeplab_stages")
