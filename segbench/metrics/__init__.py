"""Built-in metrics: ``miou`` (confusion.py), ``cls_map`` (classification.py), ``loc_map`` (pointing.py).

They are registered by the built-in plugin :mod:`segbench.metrics.builtin`;
build them with ``segbench.create_metric(name, num_classes=..., ...)``.
Importing this package does not import torch.
"""
