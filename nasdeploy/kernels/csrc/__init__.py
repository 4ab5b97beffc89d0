"""C++/CUDA sources of the fused kernels, shipped as package data (found with importlib.resources)."""
