"""`ThaStage`: the five THA3 stage graphs with change detection and an intermediate LRU.

Per image (`set_image`): the decomposer runs once (and, with eyebrows off, the combiner once
with a neutral eyebrow pose).
Per frame (`run`):
  * combiner  only when the eyebrow slice pose[0:12] changed (skipped with eyebrows off);
  * morpher   only when pose[0:39] changed;
  * rotator and editor always (the rotation slice enters at their first layer).
With a model cache budget, combiner outputs (keyed by pose[0:12]) and morpher outputs (keyed by
pose[0:39]) are kept in byte-budgeted LRUs, so poses seen before skip those graphs.

Buffers: on device sessions every intermediate stays in device memory (session buffers are fed
to the next graph by address). The LRU entries are device copies with ``cache_on_device=True``
(get_core's ``model_vram_cache``) and host numpy copies otherwise (uploaded again on a hit).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from ezvtb.engines.base import Session
from ezvtb.lru import ByteLRU
from ezvtb.models.tha3.spec import STAGES
from ezvtb.pose import EYEBROW, FACE, ROTATION
from ezvtb.stages.timing import Timings

log = logging.getLogger("ezvtb.tha")

# Share of the model-cache budget given to combiner outputs (the rest goes to the morpher).
COMBINER_CACHE_SHARE = 0.1


def _nbytes(value: tuple[Any, ...]) -> int:
    return sum(int(v.nbytes) for v in value)


class ThaStage:
    """Runs THA3 on one character image. See the module docstring for the schedule.

    `sessions` maps each of ``decomposer, combiner, morpher, rotator, editor`` to a `Session`
    whose spec is `ezvtb.models.tha3.spec.graph_spec(stage, precision)`.
    `run` returns the frame, uint8 (512, 512, 4) BGRA, overwritten by the next `run`: a host
    array owned by the stage (the editor session's own buffer on host sessions), or, with
    ``device_output=True`` on a device session, the editor session's device buffer (for a next
    stage on the same device; `to_host` downloads it).
    cache_on_device: keep the LRU entries in the sessions' (device) memory; False keeps host copies.
    """

    precision: str | None = None  # fp32 / fp16 of the graphs (set by get_core), reported by stats()

    device_output = False

    def __init__(self, sessions: Mapping[str, Session], use_eyebrow: bool = True,
                 cache_bytes: int = 0, cache_on_device: bool = True) -> None:
        missing = [s for s in STAGES if s not in sessions]
        if missing:
            raise ValueError(f"sessions: missing THA3 stages {missing}")
        self.sessions = dict(sessions)
        self.use_eyebrow = bool(use_eyebrow)
        self.cache_bytes = int(cache_bytes)
        self.cache_on_device = bool(cache_on_device)
        self._host_frame: np.ndarray | None = None
        self._combiner_lru: ByteLRU | None = None
        self._morpher_lru: ByteLRU | None = None
        if cache_bytes > 0:
            share = COMBINER_CACHE_SHARE if self.use_eyebrow else 0.0
            self._combiner_lru = ByteLRU(int(cache_bytes * share), _nbytes)
            self._morpher_lru = ByteLRU(cache_bytes - int(cache_bytes * share), _nbytes)
        self.timings = Timings()
        self.runs = {s: 0 for s in STAGES}
        self._has_image = False
        self._eyebrow_pose = np.zeros((1, 12), np.float32)
        self._face_pose = np.zeros((1, 27), np.float32)
        self._rotation_pose = np.zeros((1, 6), np.float32)
        self._last_eyebrow: bytes | None = None
        self._last_face: bytes | None = None
        self._decomposed: Mapping[str, Any] = {}
        self._face_inputs: tuple[Any, Any] | None = None  # (face_crop, face_features)
        self._morphed: tuple[Any, Any] | None = None  # (face_morphed_full, face_morphed_half)

    # -- helpers ---------------------------------------------------------------------------
    def _run(self, stage: str, feeds: Mapping[str, Any]) -> Mapping[str, Any]:
        with self.timings.time(stage):
            out = self.sessions[stage].run(feeds)
        self.runs[stage] += 1
        return out

    def _keep(self, stage: str, value: Any) -> Any:
        """A copy of a session-owned buffer that survives the next run, in the session's memory."""
        return self.sessions[stage].copy_buffer(value)

    def _cache_copy(self, stage: str, value: Any) -> Any:
        """A copy for the LRU: device memory with `cache_on_device`, else a host numpy array."""
        if self.cache_on_device or isinstance(value, np.ndarray):
            return self._keep(stage, value)
        return self.sessions[stage].to_host(value, np.empty(value.shape, value.dtype))

    # -- public API ------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> None:
        """Decompose a validated uint8 (512, 512, 4) BGRA image; clears the pose caches."""
        with self.timings.time("set_image"):
            dec = self._run("decomposer", {"image": image})
            # Keep the decomposer's outputs: they are inputs of every later frame.
            self._decomposed = {k: self._keep("decomposer", v) for k, v in dec.items()}
            self._last_eyebrow = self._last_face = None
            self._face_inputs = self._morphed = None
            for lru in (self._combiner_lru, self._morpher_lru):
                if lru is not None:
                    lru.clear()
            if not self.use_eyebrow:
                self._eyebrow_pose[:] = 0.0
                out = self._run_combiner()
                self._face_inputs = (self._keep("combiner", out["face_crop"]),
                                     self._keep("combiner", out["face_features"]))
        self._has_image = True

    def _run_combiner(self) -> Mapping[str, Any]:
        d = self._decomposed
        return self._run("combiner", {
            "image_prepared": d["image_prepared"],
            "eyebrow_background_layer": d["eyebrow_background_layer"],
            "eyebrow_layer": d["eyebrow_layer"],
            "eyebrow_pose": self._eyebrow_pose,
        })

    @property
    def has_image(self) -> bool:
        return self._has_image

    def run(self, pose: np.ndarray) -> np.ndarray:
        """Render one frame for a validated float32 (45,) pose. Needs `set_image` first."""
        if not self._has_image:
            raise RuntimeError("setImage must be called before inference")
        face_changed = False
        if self.use_eyebrow:
            key = pose[EYEBROW].tobytes()
            if key != self._last_eyebrow:
                cached = self._combiner_lru.get(key) if self._combiner_lru is not None else None
                if cached is None:
                    self._eyebrow_pose[0] = pose[EYEBROW]
                    out = self._run_combiner()
                    cached = (out["face_crop"], out["face_features"])
                    if self._combiner_lru is not None:
                        cached = (self._cache_copy("combiner", cached[0]), self._cache_copy("combiner", cached[1]))
                        self._combiner_lru.put(key, cached)
                self._face_inputs = cached
                self._last_eyebrow = key
                face_changed = True
        key39 = pose[:FACE.stop].tobytes()
        if face_changed or key39 != self._last_face:
            cached = self._morpher_lru.get(key39) if self._morpher_lru is not None else None
            if cached is None:
                self._face_pose[0] = pose[FACE]
                out = self._run("morpher", {
                    "image_prepared": self._decomposed["image_prepared"],
                    "face_crop": self._face_inputs[0],
                    "face_features": self._face_inputs[1],
                    "face_pose": self._face_pose,
                })
                cached = (out["face_morphed_full"], out["face_morphed_half"])
                if self._morpher_lru is not None:
                    cached = (self._cache_copy("morpher", cached[0]), self._cache_copy("morpher", cached[1]))
                    self._morpher_lru.put(key39, cached)
            self._morphed = cached
            self._last_face = key39
        self._rotation_pose[0] = pose[ROTATION]
        rot = self._run("rotator", {"face_morphed_half": self._morphed[1], "rotation_pose": self._rotation_pose})
        out = self._run("editor", {
            "face_morphed_full": self._morphed[0],
            "warped_image": rot["warped_image"],
            "grid_change": rot["grid_change"],
            "rotation_pose": self._rotation_pose,
        })
        return out["image"] if self.device_output else self.to_host(out["image"])

    def to_host(self, frame: Any) -> np.ndarray:
        """`frame` (a `run` result) as a host array: identity for host arrays, else a download into
        the stage's host buffer (page-locked on CUDA; overwritten by the next download)."""
        if isinstance(frame, np.ndarray):
            return frame
        editor = self.sessions["editor"]
        if self._host_frame is None:
            self._host_frame = editor.host_array(frame.shape, frame.dtype)
        return editor.to_host(frame, self._host_frame)

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = {"precision": self.precision, "runs": dict(self.runs), "latency": self.timings.summary(),
                             "backend": self.sessions["editor"].backend,
                             "device": bool(self.sessions["editor"].on_device),
                             "cache_on_device": self.cache_on_device and bool(self.sessions["morpher"].on_device)}
        for name, lru in (("combiner_cache", self._combiner_lru), ("morpher_cache", self._morpher_lru)):
            if lru is not None:
                s[name] = {"entries": len(lru), "bytes": lru.bytes, "budget": lru.budget,
                           "hits": lru.hits, "misses": lru.misses, "evictions": lru.evictions}
        return s

    def close(self) -> None:
        for s in self.sessions.values():
            s.close()
