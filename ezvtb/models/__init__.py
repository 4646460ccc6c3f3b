"""Model definitions (PyTorch) and their graph specs.

`*/spec.py` modules declare the exported graphs' tensors and never import torch, so the
runtime can read them; the model modules themselves need torch (the ``export`` extra).
"""
