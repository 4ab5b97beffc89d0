"""Task code shared by search and training (language-model epochs/eval, segmentation metrics); neither stage owns it."""
