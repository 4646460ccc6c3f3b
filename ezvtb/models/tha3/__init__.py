"""THA3 (Talking Head Anime 3): five sub-networks, separable and standard variants.

`spec` (torch-free) declares the five stage graphs; the PyTorch modules live in the other
modules of this package and load the official state dicts with ``strict=True``.
"""
