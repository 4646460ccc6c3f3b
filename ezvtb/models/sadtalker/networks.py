"""SadTalker's Audio2Coeff networks (OpenTalker/SadTalker, Apache-2.0), written for ezvtb in the official key
layouts so both checkpoint formats load strictly. Sizes come from the weights' shapes (`*.from_state_dict`).

- `ExpressionNet` (upstream `SimpleWrapperV2`, keys ``audio_encoder.*``, ``mapping1.*``): a Wav2Lip-style mel
  encoder (80x16 -> 512) and one Linear on [audio, reference expression, blink ratio] -> 64 expression
  coefficients per video frame.
- `PoseNet` (the inference half of upstream `Audio2Pose`: keys ``audio_encoder.audio_encoder.*`` and
  ``netG.decoder.*``): the same mel encoder, then the CVAE decoder: z + class bias, MLP with a sigmoid, reshape
  to (seq_len, 6), a 2-D ResUnet over (time, pose), Linear(6 -> 6) -> head motion for one chunk of frames.
  The CVAE encoder (``netG.encoder.*``) and the motion discriminator (``netD_motion.*``) are training-only.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

# (stride, padding, residual) of the 13 encoder layers (Wav2Lip's audio encoder); kernel and widths come from weights
ENCODER_LAYOUT = (
    (1, 1, False), (1, 1, True), (1, 1, True),
    ((3, 1), 1, False), (1, 1, True), (1, 1, True),
    (3, 1, False), (1, 1, True), (1, 1, True),
    ((3, 2), 1, False), (1, 1, True),
    (1, 0, False), (1, 0, False),
)


class ConvBnRelu(nn.Module):
    """Conv2d + BatchNorm (``conv_block.0/1``), optional identity skip, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride, padding: int, residual: bool) -> None:
        super().__init__()
        if residual and cin != cout:
            raise ValueError(f"residual encoder layer needs equal widths, got {cin} -> {cout}")
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        return torch.relu(y + x if self.residual else y)


def mel_encoder(widths: list[tuple[int, int, int]]) -> nn.Sequential:
    """The 13-layer mel encoder; widths[i] = (cin, cout, kernel). (N, 1, 80, 16) -> (N, C, 1, 1)."""
    if len(widths) != len(ENCODER_LAYOUT):
        raise ValueError(f"audio encoder: expected {len(ENCODER_LAYOUT)} layers, got {len(widths)}")
    return nn.Sequential(*[ConvBnRelu(ci, co, k, s, p, r) for (ci, co, k), (s, p, r) in zip(widths, ENCODER_LAYOUT)])


def _encoder_widths(sd: dict[str, torch.Tensor], prefix: str) -> list[tuple[int, int, int]]:
    out = []
    for i in range(len(ENCODER_LAYOUT)):
        key = f"{prefix}{i}.conv_block.0.weight"
        if key not in sd:
            raise KeyError(f"missing {key!r}")
        w = sd[key]
        out.append((int(w.shape[1]), int(w.shape[0]), int(w.shape[2])))
    return out


class ExpressionNet(nn.Module):
    """(N, 1, 80, 16) mel windows, (B, T, E) reference expression, (B, T, 1) blink ratio -> (B, T, E), N = B*T."""

    def __init__(self, widths: list[tuple[int, int, int]] | None = None, exp_dim: int = 64) -> None:
        super().__init__()
        widths = widths or default_encoder_widths()
        self.audio_encoder = mel_encoder(widths)
        self.mapping1 = nn.Linear(widths[-1][1] + exp_dim + 1, exp_dim)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "ExpressionNet":
        """Built with the sizes in `sd` and loaded strictly (RuntimeError/KeyError on a layout mismatch)."""
        widths = _encoder_widths(sd, "audio_encoder.")
        net = cls(widths, int(sd["mapping1.weight"].shape[0]))
        net.load_state_dict(sd, strict=True)
        return net.eval()

    def forward(self, mels: torch.Tensor, ref_exp: torch.Tensor, blink: torch.Tensor) -> torch.Tensor:
        n = mels.shape[0]
        audio = self.audio_encoder(mels).reshape(n, -1)
        y = self.mapping1(torch.cat([audio, ref_exp.reshape(n, -1), blink.reshape(n, -1)], dim=1))
        return y.reshape(ref_exp.shape[0], ref_exp.shape[1], -1)


def default_encoder_widths() -> list[tuple[int, int, int]]:
    chans = [1, 32, 32, 32, 64, 64, 64, 128, 128, 128, 256, 256, 512, 512]
    return [(chans[i], chans[i + 1], 1 if i == 12 else 3) for i in range(13)]


class ResidualConv(nn.Module):
    """BN-ReLU-Conv(stride)-BN-ReLU-Conv plus a Conv(stride)-BN skip."""

    def __init__(self, cin: int, cout: int, stride) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, stride, 1),
            nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1))
        self.conv_skip = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class Upsample(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(cin, cout, kernel_size=(2, 1), stride=(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class ResUnet(nn.Module):
    """A 3-level residual U-Net over (B, 1, time, 6) that halves and restores only the time axis; sigmoid output."""

    def __init__(self, filters: tuple[int, int, int, int] = (32, 64, 128, 256), channels: int = 1) -> None:
        super().__init__()
        f0, f1, f2, f3 = filters
        self.input_layer = nn.Sequential(nn.Conv2d(channels, f0, 3, padding=1), nn.BatchNorm2d(f0), nn.ReLU(),
                                         nn.Conv2d(f0, f0, 3, padding=1))
        self.input_skip = nn.Sequential(nn.Conv2d(channels, f0, 3, padding=1))
        self.residual_conv_1 = ResidualConv(f0, f1, (2, 1))
        self.residual_conv_2 = ResidualConv(f1, f2, (2, 1))
        self.bridge = ResidualConv(f2, f3, (2, 1))
        self.upsample_1 = Upsample(f3, f3)
        self.up_residual_conv1 = ResidualConv(f3 + f2, f2, 1)
        self.upsample_2 = Upsample(f2, f2)
        self.up_residual_conv2 = ResidualConv(f2 + f1, f1, 1)
        self.upsample_3 = Upsample(f1, f1)
        self.up_residual_conv3 = ResidualConv(f1 + f0, f0, 1)
        self.output_layer = nn.Sequential(nn.Conv2d(f0, channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.input_layer(x) + self.input_skip(x)
        x2 = self.residual_conv_1(x1)
        x3 = self.residual_conv_2(x2)
        x4 = self.bridge(x3)
        x6 = self.up_residual_conv1(torch.cat([self.upsample_1(x4), x3], dim=1))
        x8 = self.up_residual_conv2(torch.cat([self.upsample_2(x6), x2], dim=1))
        x10 = self.up_residual_conv3(torch.cat([self.upsample_3(x8), x1], dim=1))
        return self.output_layer(x10)


@dataclass(frozen=True)
class PoseConfig:
    """CVAE decoder sizes (upstream `auido2pose.yaml`: SEQ_LEN 32, LATENT_SIZE 64, AUDIO_EMB 512 -> 6,
    DECODER_LAYER_SIZES [128, 192], NUM_CLASSES 46)."""

    seq_len: int = 32
    latent_size: int = 64
    audio_emb_in: int = 512
    audio_emb_out: int = 6
    decoder_layers: tuple[int, ...] = (128, 192)
    num_classes: int = 46
    unet_filters: tuple[int, int, int, int] = (32, 64, 128, 256)

    def check(self) -> None:
        if self.seq_len % 8:
            raise ValueError(f"audio2pose: SEQ_LEN must be divisible by 8 (3 time halvings), got {self.seq_len}")
        if self.decoder_layers[-1] != 6 * self.seq_len:
            raise ValueError(f"audio2pose: the last decoder layer must have 6*SEQ_LEN = {6 * self.seq_len} units, "
                             f"got {self.decoder_layers[-1]}")


class PoseDecoder(nn.Module):
    """CVAE decoder (keys ``netG.decoder.*``): z (B, L), class (B,), ref pose (B, 6), audio (B, S, 512) ->
    motion (B, S, 6)."""

    def __init__(self, cfg: PoseConfig) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.resunet = ResUnet(cfg.unet_filters)
        sizes = [cfg.latent_size + cfg.seq_len * cfg.audio_emb_out + 6, *cfg.decoder_layers]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers[f"L{i}"] = nn.Linear(a, b)
            if i + 2 < len(sizes):
                layers[f"A{i}"] = nn.ReLU()
            else:
                layers["sigmoid"] = nn.Sigmoid()
        self.MLP = nn.Sequential(layers)
        self.pose_linear = nn.Linear(6, 6)
        self.linear_audio = nn.Linear(cfg.audio_emb_in, cfg.audio_emb_out)
        self.classbias = nn.Parameter(torch.zeros(cfg.num_classes, cfg.latent_size))

    def forward(self, z: torch.Tensor, class_id: torch.Tensor, ref_pose: torch.Tensor,
                audio: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        audio6 = self.linear_audio(audio).reshape(b, -1)
        x = self.MLP(torch.cat([ref_pose, z + self.classbias[class_id], audio6], dim=-1))
        x = self.resunet(x.reshape(b, 1, self.cfg.seq_len, -1))
        return self.pose_linear(x.squeeze(1))


class _AudioEncoderHolder(nn.Module):
    """Gives the encoder the upstream key prefix ``audio_encoder.audio_encoder.*``."""

    def __init__(self, widths: list[tuple[int, int, int]]) -> None:
        super().__init__()
        self.audio_encoder = mel_encoder(widths)


class _NetG(nn.Module):
    def __init__(self, cfg: PoseConfig) -> None:
        super().__init__()
        self.decoder = PoseDecoder(cfg)


TRAINING_ONLY_PREFIXES = ("netG.encoder.", "netD_motion.")


class PoseNet(nn.Module):
    """One chunk of head motion: mels (S, 1, 80, 16), z (1, L), class_id (1,) int64, ref_pose (1, 6) ->
    motion (1, S, 6) relative to the reference frame. S = cfg.seq_len."""

    def __init__(self, cfg: PoseConfig | None = None, widths: list[tuple[int, int, int]] | None = None) -> None:
        super().__init__()
        self.cfg = cfg or PoseConfig()
        self.audio_encoder = _AudioEncoderHolder(widths or default_encoder_widths())
        self.netG = _NetG(self.cfg)

    @staticmethod
    def config_from_state_dict(sd: dict[str, torch.Tensor]) -> PoseConfig:
        p = "netG.decoder."
        pattern = re.compile(re.escape(p) + r"MLP\.L(\d+)\.weight")
        mlp = sorted((int(m.group(1)), k) for k in sd if (m := pattern.fullmatch(k)))
        if not mlp:
            raise KeyError(f"missing {p}MLP.L0.weight")
        sizes = tuple(int(sd[k].shape[0]) for _, k in mlp)
        num_classes, latent = (int(s) for s in sd[p + "classbias"].shape)
        emb_out, emb_in = (int(s) for s in sd[p + "linear_audio.weight"].shape)
        filters = (int(sd[p + "resunet.input_layer.0.weight"].shape[0]),
                   *(int(sd[p + f"resunet.{n}.conv_skip.0.weight"].shape[0])
                     for n in ("residual_conv_1", "residual_conv_2", "bridge")))
        return PoseConfig(seq_len=sizes[-1] // 6, latent_size=latent, audio_emb_in=emb_in, audio_emb_out=emb_out,
                          decoder_layers=sizes, num_classes=num_classes, unet_filters=filters)  # type: ignore[arg-type]

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "PoseNet":
        """Built from the shapes in a full upstream Audio2Pose state dict and loaded strictly; the training-only
        CVAE encoder and discriminator keys are accepted and dropped, any other unknown key is an error."""
        own = {k: v for k, v in sd.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
        net = cls(cls.config_from_state_dict(own), _encoder_widths(own, "audio_encoder.audio_encoder."))
        net.load_state_dict(own, strict=True)
        return net.eval()

    def load_upstream_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Strict load of a full upstream Audio2Pose state dict into this net (training-only keys dropped);
        the sizes in `sd` must match this net's."""
        own = {k: v for k, v in sd.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
        cfg = self.config_from_state_dict(own)
        if cfg != self.cfg:
            raise ValueError(f"audio2pose sizes differ: weights {cfg}, model {self.cfg}")
        self.load_state_dict(own, strict=True)

    def encode_audio(self, mels: torch.Tensor) -> torch.Tensor:
        """(N, 1, 80, 16) -> (N, 512)."""
        return self.audio_encoder.audio_encoder(mels).reshape(mels.shape[0], -1)

    def forward(self, mels: torch.Tensor, z: torch.Tensor, class_id: torch.Tensor,
                ref_pose: torch.Tensor) -> torch.Tensor:
        audio = self.encode_audio(mels).reshape(1, mels.shape[0], -1)
        return self.netG.decoder(z, class_id, ref_pose, audio)
