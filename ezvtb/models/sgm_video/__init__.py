"""SVD / SV3D (and SV4D layout) networks from the official sgm checkpoints, on diffusers / transformers classes.

`checkpoint` detects and splits the single-file checkpoint, `unet` / `vae` / `clip_vision` convert each part,
`spec` declares the exported graphs, `manifests/*.json` hold the official key names and shapes, derived from the
upstream model code (Stability-AI/generative-models @0ad7de9) instantiated on the meta device.
"""
