"""Datasets: CIFAR-10/100 and image folders from local paths, generated demo data; never downloads."""
