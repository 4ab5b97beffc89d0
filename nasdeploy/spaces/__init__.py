"""Search spaces: supernets whose architecture weights are real parameters (DARTS CNN, RNN, Auto-DeepLab)."""
