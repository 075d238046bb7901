"""Datasets: the embedded synthetic ``shapes`` set, and exports to the VOC and COCO layouts.

Registration lives in :mod:`segbench.data.builtin` (a built-in plugin); the
implementations (which import torch) are imported only when a dataset is built.
"""
