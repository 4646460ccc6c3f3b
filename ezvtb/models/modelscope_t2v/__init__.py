"""ModelScope text-to-video (the model sd-video runs): converters and graph specs.

The networks themselves are maintained library classes: diffusers' `UNet3DConditionModel`
(ModelScope's UNetSD), diffusers' `AutoencoderKL` (the KL-f8 VAE) and transformers'
`CLIPTextModel` (the OpenCLIP ViT-H text tower, cut after its penultimate block). `convert`
maps the original checkpoints' key layouts onto them and derives their sizes from tensor shapes;
`spec` declares the exported graphs (torch-free).
"""
