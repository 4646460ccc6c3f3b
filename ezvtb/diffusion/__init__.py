"""What the generative pipelines share: the seed-002 utilities (`util`), classifier-free guidance
(`guidance`), configured diffusers schedulers (`schedulers`), the denoising loop (`sampling`) and
a diffusers UNet3DConditionModel as one exportable step with its graph spec (`unet3d`).

Networks run through `ezvtb.engines.runner.GraphRunner` (an exported graph on an `ezvtb.engines`
session, or the torch module itself). Importing this package imports nothing heavy; each
submodule imports torch (and diffusers where it needs it).
"""
