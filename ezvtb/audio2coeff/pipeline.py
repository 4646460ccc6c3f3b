"""Audio2Coeff: speech -> 3DMM expression (64) and head pose (6) coefficients per 25 fps video frame.

The mel front end, chunking, the z draws and Savitzky-Golay smoothing run on the host (numpy/scipy); the two
networks (``audio2exp``, ``audio2pose``) are a `ezvtb.diffusion.networks.NetworkSet` with persistent sessions: ONNX
graphs on an `ezvtb.engines` session, or eager modules (``backend="torch"``, the reference).

- expression: chunks of 10 frames (the last one padded; frames are independent, so padding changes nothing),
  each (mel window, reference expression, blink ratio) -> 64 coefficients.
- pose: frame 0 is the reference (motion 0); frames 1..T-1 in chunks of 32 with a fresh z ~ N(0, I) per chunk;
  a remainder re-runs the last 32 frames (fewer than 32 frames: the first mel window repeated in front) and keeps
  the tail. pose = reference pose + motion, smoothed by Savitzky-Golay (window 13, or the largest odd <= T;
  order 2).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ezvtb.atomic import atomic_write
from ezvtb.audio2coeff import frontend
from ezvtb.audio2coeff.checkpoint import read_network_state
from ezvtb.audio2coeff.coeffs import COEFF_DIM, EXP_DIM, read_coeff_mat, smooth_pose
from ezvtb.diffusion.networks import NetworkSet
from ezvtb.models.sadtalker.spec import EXP_CHUNK, audio2exp_spec, audio2pose_spec
from ezvtb.paths import name_from_data

log = logging.getLogger("ezvtb.audio2coeff")

def _as_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"batch[{name!r}]: expected an array of numbers: {e}") from None


def apply_reference_pose(coeffs: np.ndarray, ref_pose: np.ndarray) -> np.ndarray:
    """Adds the reference video's head motion (relative to its first frame, looped to T) to columns 64:70."""
    t = coeffs.shape[0]
    looped = np.resize(ref_pose[:, :6], (max(t, ref_pose.shape[0]), 6)) if ref_pose.shape[0] < t else ref_pose[:, :6]
    out = coeffs.copy()
    out[:, 64:70] = out[:, 64:70] + (looped[:t] - ref_pose[:1, :6])
    return out


def _stem(pic_name: Any, audio_name: Any) -> str:
    """``<pic_name>##<audio_name>``, each checked to be a plain file name (they come from the batch)."""
    pic, audio = name_from_data(pic_name, "batch['pic_name']"), name_from_data(audio_name, "batch['audio_name']")
    return f"{pic}##{audio}"


def _read_yaml(path: Any, argument: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{argument}: no such file {str(p)!r}")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{argument}: {str(p)!r} is not YAML: {e}") from None
    return cfg if isinstance(cfg, dict) else {}


class Audio2Coeff(NetworkSet):
    """SadTalker's Audio2Coeff on ezvtb sessions (seed 003 API).

    sadtalker_path: ``audio2pose_yaml_path``, ``audio2exp_yaml_path`` (optional: sizes come from the weights;
    when given, the pose YAML's CVAE sizes must agree with them), ``use_safetensor`` and either ``checkpoint``
    (bundled safetensors) or ``audio2pose_checkpoint`` / ``audio2exp_checkpoint`` (old .pth dicts).
    backend: ``"torch"`` (eager), or an `ezvtb.engines` backend (``"auto"``, ``"cpu"``, ``"cuda"``, ...);
    precision: "fp32" or "fp16" for the graphs.
    """

    def __init__(self, sadtalker_path: dict, device: str = "cpu", *, backend: str = "auto",
                 precision: str = "fp32") -> None:
        from ezvtb.models.sadtalker.networks import ExpressionNet, PoseNet

        if not isinstance(sadtalker_path, dict):
            raise ValueError(f"sadtalker_path: expected a dict of paths, got {type(sadtalker_path).__name__}")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision: expected 'fp32' or 'fp16', got {precision!r}")
        self.init_networks(backend=backend, device=device, half=precision == "fp16")
        self.device = device  # as given (the seed's attribute is the device string)
        exp_state = read_network_state(sadtalker_path, "audio2exp", device)
        pose_state = read_network_state(sadtalker_path, "audio2pose", device)
        try:
            self.audio2exp_model = ExpressionNet.from_state_dict(exp_state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ValueError(f"audio2exp weights do not have SadTalker's SimpleWrapperV2 layout: {e}") from None
        try:
            self.audio2pose_model = PoseNet.from_state_dict(pose_state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ValueError(f"audio2pose weights do not have SadTalker's Audio2Pose layout: {e}") from None
        for m in (self.audio2exp_model, self.audio2pose_model):
            m.requires_grad_(False)
        self.pose_config = self.audio2pose_model.cfg
        if sadtalker_path.get("audio2pose_yaml_path"):
            self._check_pose_yaml(_read_yaml(sadtalker_path["audio2pose_yaml_path"],
                                             "sadtalker_path['audio2pose_yaml_path']"))
        if sadtalker_path.get("audio2exp_yaml_path"):
            _read_yaml(sadtalker_path["audio2exp_yaml_path"], "sadtalker_path['audio2exp_yaml_path']")
        self.exp_dim = int(self.audio2exp_model.mapping1.out_features)
        self.add_network("audio2exp", self.audio2exp_model,
                         lambda shapes: audio2exp_spec(shapes[0][0], self.exp_dim), graph_name="sadtalker_audio2exp")
        cfg = self.pose_config
        self.add_network("audio2pose", self.audio2pose_model,
                         lambda shapes: audio2pose_spec(cfg.seq_len, cfg.latent_size),
                         graph_name="sadtalker_audio2pose")

    @classmethod
    def from_source(cls, path: Any, **options: Any) -> "Audio2Coeff":
        """`load(path, device="cpu", ...)`: a bundled SadTalker safetensors (``audio2exp.*``, ``audio2pose.*``)."""
        return cls({"checkpoint": str(path), "use_safetensor": True}, **options)

    def _check_pose_yaml(self, y: dict) -> None:
        cvae = (y.get("MODEL") or {}).get("CVAE") or {}
        want = {"SEQ_LEN": self.pose_config.seq_len, "LATENT_SIZE": self.pose_config.latent_size,
                "AUDIO_EMB_IN_SIZE": self.pose_config.audio_emb_in,
                "AUDIO_EMB_OUT_SIZE": self.pose_config.audio_emb_out}
        got = {k: cvae[k] for k in want if k in cvae}
        if "DECODER_LAYER_SIZES" in cvae:
            want["DECODER_LAYER_SIZES"] = list(self.pose_config.decoder_layers)
            got["DECODER_LAYER_SIZES"] = list(cvae["DECODER_LAYER_SIZES"])
        classes = (y.get("DATASET") or {}).get("NUM_CLASSES")
        if classes is not None:
            want["NUM_CLASSES"], got["NUM_CLASSES"] = self.pose_config.num_classes, classes
        bad = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
        if bad:
            raise ValueError("sadtalker_path['audio2pose_yaml_path']: sizes disagree with the weights "
                             + ", ".join(f"{k}: yaml {a} vs weights {b}" for k, (a, b) in bad.items()))

    @property
    def num_pose_styles(self) -> int:
        return self.pose_config.num_classes

    # --- networks over whole clips ---------------------------------------------------------------
    def predict_expression(self, mels: np.ndarray, ref_exp: np.ndarray, blink: np.ndarray) -> np.ndarray:
        """mels (T, 80, 16), ref_exp (T, 64), blink (T, 1) -> (T, 64) float32, in chunks of 10 frames."""
        import torch

        t = mels.shape[0]
        out = np.empty((t, self.exp_dim), np.float32)
        with self.stage("audio2exp") as net:
            for i in self.steps(range(0, t, EXP_CHUNK), "audio2exp", progress=False):
                j = min(i + EXP_CHUNK, t)
                idx = np.minimum(np.arange(i, i + EXP_CHUNK), j - 1)  # pad the last chunk with its last frame
                y = net(torch.from_numpy(np.ascontiguousarray(mels[idx, None], np.float32)),
                        torch.from_numpy(np.ascontiguousarray(ref_exp[None, idx], np.float32)),
                        torch.from_numpy(np.ascontiguousarray(blink[None, idx], np.float32)))
                out[i:j] = y[0, : j - i].numpy()
        return out

    def pose_chunks(self, num_frames: int) -> int:
        """How many z draws (32-frame chunks) a clip of `num_frames` frames uses."""
        rest = max(0, num_frames - 1)
        return rest // self.pose_config.seq_len + (1 if rest % self.pose_config.seq_len else 0)

    def predict_motion(self, mels: np.ndarray, ref_pose: np.ndarray, pose_style: int,
                       draw_z: Callable[[int], np.ndarray]) -> np.ndarray:
        """(T, 6) head motion relative to frame 0 (unsmoothed). `draw_z(chunk_index)` gives a (latent,) z."""
        import torch

        seq = self.pose_config.seq_len
        t = mels.shape[0]
        rest = mels[1:]
        n = t - 1
        motion = [np.zeros((1, 6), np.float32)]
        ref = torch.from_numpy(np.asarray(ref_pose, np.float32).reshape(1, 6))
        cls = torch.tensor([pose_style], dtype=torch.int64)
        full, re = divmod(n, seq)
        with self.stage("audio2pose") as net:
            def run(chunk: np.ndarray, k: int) -> np.ndarray:
                z = torch.from_numpy(np.asarray(draw_z(k), np.float32).reshape(1, -1))
                m = torch.from_numpy(np.ascontiguousarray(chunk[:, None], np.float32))
                out = net(m, z, cls, ref)[0].numpy()
                self.report("audio2pose", k + 1, full + bool(re))
                return out

            for k in range(full):
                motion.append(run(rest[k * seq:(k + 1) * seq], k))
            if re:
                tail = rest[-seq:]
                if tail.shape[0] < seq:  # repeat the first window in front (upstream pads the embeddings the same way)
                    tail = np.concatenate([np.repeat(tail[:1], seq - tail.shape[0], axis=0), tail])
                motion.append(run(tail, full)[-re:])
        return np.concatenate(motion).astype(np.float32)

    # --- seed API --------------------------------------------------------------------------------
    def _check_style(self, pose_style: Any) -> int:
        if isinstance(pose_style, bool) or not isinstance(pose_style, (int, np.integer)) \
                or not 0 <= int(pose_style) < self.num_pose_styles:
            raise ValueError(f"pose_style: expected an integer in [0, {self.num_pose_styles}), got {pose_style!r}")
        return int(pose_style)

    def coefficients(self, batch: dict, pose_style: int, z: np.ndarray | None = None) -> np.ndarray:
        """(T, 70) float32 [expression 64 | pose 6] for a seed batch. `z` (chunks, latent) fixes the pose draws;
        without it each chunk draws ``torch.randn(1, latent)`` from torch's global RNG (as upstream)."""
        import torch

        pose_style = self._check_style(pose_style)
        if not isinstance(batch, dict):
            raise ValueError(f"batch: expected a dict, got {type(batch).__name__}")
        for key in ("indiv_mels", "ref", "ratio_gt"):
            if key not in batch:
                raise ValueError(f"batch: missing {key!r} (expected indiv_mels (1,T,1,80,16), ref (1,T,70), "
                                 f"ratio_gt (1,T,1))")
        mels = _as_numpy(batch["indiv_mels"], "indiv_mels")
        if mels.ndim != 5 or mels.shape[0] != 1 or mels.shape[2:] != (1, 80, 16) or mels.shape[1] < 1:
            raise ValueError(f"batch['indiv_mels']: expected (1, T >= 1, 1, 80, 16), got {list(mels.shape)}")
        mels = mels[0, :, 0]
        t = mels.shape[0]
        ref = _as_numpy(batch["ref"], "ref")
        if ref.ndim != 3 or ref.shape[0] != 1 or ref.shape[1] < t or ref.shape[2] < COEFF_DIM:
            raise ValueError(f"batch['ref']: expected (1, {t}, 70), got {list(ref.shape)}")
        ratio = _as_numpy(batch["ratio_gt"], "ratio_gt").reshape(1, -1, 1) if np.size(batch["ratio_gt"]) else None
        if ratio is None or ratio.shape[1] < t:
            raise ValueError(f"batch['ratio_gt']: expected (1, {t}, 1)")
        nf = int(batch.get("num_frames", t))
        if nf != t:
            raise ValueError(f"batch['num_frames']: {nf} disagrees with indiv_mels' {t} frames")
        latent = self.pose_config.latent_size
        if z is not None:
            z = np.asarray(z, np.float32)
            need = self.pose_chunks(t)
            if z.ndim != 2 or z.shape[0] < need or z.shape[1] != latent:
                raise ValueError(f"z: expected ({need}, {latent}) latent draws, got {list(z.shape)}")

            def draw(k: int) -> np.ndarray:
                return z[k]
        else:
            def draw(k: int) -> np.ndarray:
                return torch.randn(1, latent).numpy()

        exp = self.predict_expression(mels, ref[0, :t, :EXP_DIM], ratio[0, :t])
        motion = self.predict_motion(mels, ref[0, 0, 64:70], pose_style, draw)
        pose = smooth_pose(ref[0, :1, 64:70] + motion)
        return np.concatenate([exp, pose], axis=1)

    def generate(self, batch: dict, coeff_save_dir: str | os.PathLike, pose_style: int,
                 ref_pose_coeff_path: str | os.PathLike | None = None) -> str:
        """Writes ``<pic_name>##<audio_name>.mat`` with ``coeff_3dmm`` (T, 70) into `coeff_save_dir` (atomically)
        and returns its path. `batch` is the seed's: indiv_mels, ref, ratio_gt, num_frames, pic_name, audio_name
        (optional ``z`` (chunks, latent) fixes the pose draws)."""
        names = (batch.get("pic_name", "image"), batch.get("audio_name", "audio")) if isinstance(batch, dict) else ()
        stem = _stem(*names) if names else ""
        coeffs = self.coefficients(batch, pose_style, batch.get("z") if isinstance(batch, dict) else None)
        if ref_pose_coeff_path is not None:
            coeffs = self.using_refpose(coeffs, ref_pose_coeff_path)
        return self.save(coeffs, coeff_save_dir, stem)

    @staticmethod
    def save(coeffs: np.ndarray, coeff_save_dir: str | os.PathLike, stem: str) -> str:
        """Writes ``<stem>.mat`` into `coeff_save_dir`; `stem` must be one plain file name (ValueError)."""
        from scipy.io import savemat

        name_from_data(stem, "stem")
        d = Path(coeff_save_dir)
        if d.exists() and not d.is_dir():
            raise ValueError(f"coeff_save_dir: {str(d)!r} is not a folder")
        path = d / f"{stem}.mat"
        with atomic_write(path, "wb") as f:
            savemat(f, {"coeff_3dmm": coeffs})
        return str(path)

    def using_refpose(self, coeffs_pred_numpy: np.ndarray, ref_pose_coeff_path: str | os.PathLike) -> np.ndarray:
        """Adds the head motion of a reference video's ``coeff_3dmm[:, 64:70]`` (relative to its first frame,
        looped to T) to the predicted pose."""
        ref = read_coeff_mat(ref_pose_coeff_path, "ref_pose_coeff_path")
        c = np.asarray(coeffs_pred_numpy, np.float32)
        if c.ndim != 2 or c.shape[1] < COEFF_DIM:
            raise ValueError(f"coeffs_pred_numpy: expected (T, 70), got {list(c.shape)}")
        return apply_reference_pose(c, ref[:, 64:70])

    # --- plain entry -----------------------------------------------------------------------------
    def make_batch(self, audio_path: str | os.PathLike, first_coeff_path: str | os.PathLike, *,
                   seed: int | None = None, use_blink: bool = True,
                   pad_mode: str = "constant") -> dict:
        """The seed batch for a wav (any rate/channels) and a first-frame coefficient .mat (N, >= 70)."""
        import torch

        wav = frontend.load_wav(audio_path, argument="audio_path")
        if len(wav) < frontend.SAMPLES_PER_FRAME:
            raise ValueError(f"audio_path: {str(audio_path)!r} lasts {len(wav) / frontend.SAMPLE_RATE * 1000:.1f} ms,"
                             f" shorter than one 25 fps video frame (40 ms)")
        if not np.any(wav):
            log.warning("audio_path: %s is silent; the mouth will stay closed", audio_path)
        feats = frontend.audio_features(wav, pad_mode, "audio_path")
        first = read_coeff_mat(first_coeff_path, "first_coeff_path")
        t = feats.num_frames
        rng = np.random.default_rng(seed)
        blink = frontend.blink_schedule(t, rng) if use_blink else np.zeros((t, 1), np.float32)
        ref = np.repeat(first[:1, :COEFF_DIM], t, axis=0)
        return {"indiv_mels": torch.from_numpy(feats.mels[None, :, None]), "ref": torch.from_numpy(ref[None]),
                "num_frames": t, "ratio_gt": torch.from_numpy(blink[None]),
                "audio_name": Path(audio_path).stem, "pic_name": Path(first_coeff_path).stem}

    def from_wav(self, audio_path: str | os.PathLike, first_coeff_path: str | os.PathLike, *, pose_style: int = 0,
                 seed: int | None = 0, coeff_save_dir: str | os.PathLike | None = None,
                 ref_pose_coeff_path: str | os.PathLike | None = None) -> np.ndarray | str:
        """(T, 70) coefficients for a wav, or the written .mat path when `coeff_save_dir` is given. `seed` fixes
        the blink schedule and the pose z draws (a torch.Generator seeded with it; `None` = random). Streamed:
        memory is a constant working set plus the result, whatever the length (`ezvtb.audio2coeff.streamed`);
        the coefficients are `coefficients(make_batch(...))`'s."""

        from ezvtb.audio2coeff.streamed import coefficients_from_wav

        pose_style = self._check_style(pose_style)
        stem = _stem(Path(first_coeff_path).stem, Path(audio_path).stem) if coeff_save_dir is not None else ""
        coeffs = coefficients_from_wav(self, audio_path, first_coeff_path, pose_style, seed)  # bounded memory
        if ref_pose_coeff_path is not None:
            coeffs = self.using_refpose(coeffs, ref_pose_coeff_path)
        if coeff_save_dir is None:
            return coeffs
        return self.save(coeffs, coeff_save_dir, stem)


HEAD_RANGE_DEG = 15.0  # THA3 head_x/head_y/neck_z = +-1 at about 15 degrees (ezvtb.live.mapping's default ranges)


def head_pose_track(coeffs: np.ndarray, fps: float, range_deg: float = HEAD_RANGE_DEG) -> np.ndarray:
    """THA3 (head_x, head_y, neck_z) per video frame at `fps` from Audio2Coeff's (T, 70) 25 fps coefficients.

    Columns 64:67 are the 3DMM rotation angles (pitch, yaw, roll) in radians; they are linearly resampled to
    `fps` and mapped like a tracker's head angles (head_x = -pitch, head_y = -yaw, neck_z = roll, each divided by
    `range_deg` and clipped to [-1, 1]). Approximate: the 3DMM and THA3 axes were not calibrated against each other.
    """
    c = np.asarray(coeffs, np.float64)
    if c.ndim != 2 or c.shape[1] < COEFF_DIM or c.shape[0] < 1:
        raise ValueError(f"coeffs: expected (T >= 1, 70) coefficients, got {list(c.shape)}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps: expected a number > 0, got {fps!r}")
    deg = np.degrees(c[:, 64:67])
    n = max(1, int(np.ceil(c.shape[0] / frontend.FPS * fps)))
    src_t = np.arange(c.shape[0]) / frontend.FPS
    t = np.arange(n) / fps
    ang = np.stack([np.interp(t, src_t, deg[:, k]) for k in range(3)], axis=1)
    out = np.stack([-ang[:, 0], -ang[:, 1], ang[:, 2]], axis=1) / range_deg
    return np.clip(out, -1.0, 1.0).astype(np.float32)

