"""Tensor names, shapes and dtypes of the exported face-tracking graphs, and the detector's anchors (torch-free).

Two graphs, read from MediaPipe's TFLite models (`ezvtb.weights.mediapipe`)::

    face_detector   (BlazeFace short range)
      input:  image      u8[128, 128, 3]   RGB, the frame letterboxed to a square and resized
      output: boxes      f32[896, 16]      raw box + 6 keypoint offsets per anchor (x, y order,
                                           in 128-px input units, relative to the anchor centre)
              scores     f32[896]          face probability per anchor (sigmoid of the logit,
                                           logits clipped to +-100 as MediaPipe does)
    face_landmarks  (face mesh, 468 points)
      input:  image      u8[192, 192, 3]   RGB, the face region warped upright
      output: landmarks  f32[468, 3]       x, y in input pixels, z in the same scale (relative depth)
              presence   f32[1]            face presence probability (sigmoid)
    face_landmarks_attention  (face mesh with attention: the same plus irises)
      input:  image      u8[192, 192, 3]
      output: landmarks  f32[468, 3]
              irises     f32[10, 2]        x, y of 5 points (centre, then 4 on the rim) of the iris of the
                                           image's left eye (the user's right), then of the other eye
              presence   f32[1]

Inside the graphs: uint8 -> float32, scaled to MediaPipe's input range ([-1, 1] for the detector,
[0, 1] for the mesh), NHWC -> the network (`ezvtb.models.facetrack.net.TfliteNet`) -> the outputs
above. Anchors, box decoding, non-maximum suppression and region tracking run on the host
(`ezvtb.live.facetrack`).
"""
from __future__ import annotations

import numpy as np

from ezvtb.engines.base import GraphSpec, TensorSpec

DETECTOR = "face_detection_short_range"
LANDMARKS = "face_landmark"
ATTENTION = "face_landmark_with_attention"
DETECTOR_SIZE = 128
LANDMARK_SIZE = 192
NUM_ANCHORS = 896
NUM_LANDMARKS = 468
DETECTOR_RANGE = (-1.0, 1.0)
LANDMARK_RANGE = (0.0, 1.0)
SCORE_CLIP = 100.0
# SSD anchors of the short-range detector: strides 8, 16, 16, 16 (layers of equal stride share a
# grid), two anchors per layer and cell (scale 1 and the interpolated scale, fixed size 1x1).
ANCHOR_STRIDES = (8, 16, 16, 16)


def detector_spec() -> GraphSpec:
    s = DETECTOR_SIZE
    return GraphSpec("face_detector", (TensorSpec("image", (s, s, 3), "uint8"),),
                     (TensorSpec("boxes", (NUM_ANCHORS, 16), "float32"),
                      TensorSpec("scores", (NUM_ANCHORS,), "float32")))


def landmark_spec() -> GraphSpec:
    s = LANDMARK_SIZE
    return GraphSpec("face_landmarks", (TensorSpec("image", (s, s, 3), "uint8"),),
                     (TensorSpec("landmarks", (NUM_LANDMARKS, 3), "float32"), TensorSpec("presence", (1,), "float32")))


def attention_spec() -> GraphSpec:
    s = LANDMARK_SIZE
    return GraphSpec("face_landmarks_attention", (TensorSpec("image", (s, s, 3), "uint8"),),
                     (TensorSpec("landmarks", (NUM_LANDMARKS, 3), "float32"), TensorSpec("irises", (10, 2), "float32"),
                      TensorSpec("presence", (1,), "float32")))


def anchors(size: int = DETECTOR_SIZE, strides: tuple[int, ...] = ANCHOR_STRIDES) -> np.ndarray:
    """float32 [N, 2] anchor centres (x, y) in 0..1, in the detector's output order."""
    out = []
    i = 0
    while i < len(strides):
        stride = strides[i]
        per_cell = 0
        while i < len(strides) and strides[i] == stride:
            per_cell += 2
            i += 1
        n = int(np.ceil(size / stride))
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(cells, per_cell, axis=0))
    a = np.concatenate(out).astype(np.float32)
    return a
