"""Deprecated location: moved to `nasdeploy.tasks.segmentation` (this re-export goes away in the next release)."""

from nasdeploy.utils.deprecation import reexport_moved

reexport_moved(globals(), "nasdeploy.train.seg_metrics", "nasdeploy.tasks.segmentation")
