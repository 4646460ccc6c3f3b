"""What the generative pipelines share: their base class `networks.NetworkSet` (named networks, backend and
device from the engines' policy, session lifetime, close, progress), classifier-free guidance (`guidance`),
configured diffusers schedulers (`schedulers`), the one denoising loop (`sampling`), the latent-diffusion
utilities (`util`) and a diffusers UNet3DConditionModel as one exportable step with its graph spec (`unet3d`).

Networks run through `ezvtb.engines.runner.GraphRunner` (an exported graph on an `ezvtb.engines`
session, or the torch module itself). Importing this package imports nothing heavy; each
submodule imports torch (and diffusers where it needs it).
"""
