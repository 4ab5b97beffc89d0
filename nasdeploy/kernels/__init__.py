"""Fused search kernels (C++/CUDA torch extension): nothing is compiled until first use.

Kernels know nothing of cells or genotypes: they fuse a weighted sum of terms (see mixed_node.py);
nasdeploy.spaces.fused_mixer maps a search cell's mixed edges onto them.
"""

from nasdeploy.kernels.build import BuildInfo, build_extension, load_extension, source_dir
from nasdeploy.kernels.mixed_node import load_mixed_node, mixed_node
from nasdeploy.kernels.reference import reference_mixed_node
from nasdeploy.kernels.terms import MAX_EDGES, MAX_TERMS, Term, TermKind

__all__ = [
    "BuildInfo",
    "MAX_EDGES",
    "MAX_TERMS",
    "Term",
    "TermKind",
    "build_extension",
    "load_extension",
    "load_mixed_node",
    "mixed_node",
    "reference_mixed_node",
    "source_dir",
]
