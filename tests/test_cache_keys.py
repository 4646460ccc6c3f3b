"""Cache keys: blake2b of image content, variant, fidelity and the pose; identical across processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from ezvtb.cache.keys import FrameKeys, character_digest
from ezvtb.pose import quantize_pose

KEY_SCRIPT = """
import json, sys, numpy as np
from ezvtb.cache.keys import FrameKeys, character_digest
img = (np.arange(512 * 512 * 4, dtype=np.uint32) * 2654435761 % 251).astype(np.uint8).reshape(512, 512, 4)
poses = np.linspace(-1, 1, 3 * 45, dtype=np.float32).reshape(3, 45)
k = FrameKeys(character_digest(img, "tha3/separable/fp32/eyebrow", 85))
print(json.dumps([k.key(p).hex() for p in poses]))
"""


def _keys_here() -> list[str]:
    ns: dict = {}
    exec(KEY_SCRIPT.replace("print(", "result = ("), ns)  # same code as the child processes
    return json.loads(ns["result"])


def test_keys_are_identical_across_processes_and_hash_seeds():
    here = _keys_here()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-c", KEY_SCRIPT], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout) == here
    assert len(set(here)) == 3 and all(len(h) == 40 for h in here)


def test_every_part_of_the_key_matters():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (512, 512, 4), dtype=np.uint8)
    pose = rng.random(45).astype(np.float32)
    base = FrameKeys(character_digest(img, "tha3/separable/fp32/eyebrow", 85)).key(pose)
    other_img = img.copy()
    other_img[300, 200, 1] ^= 1  # one bit of one pixel
    variants = [
        character_digest(other_img, "tha3/separable/fp32/eyebrow", 85),
        character_digest(img, "tha3/separable/fp16/eyebrow", 85),
        character_digest(img, "tha3/standard/fp32/eyebrow", 85),
        character_digest(img, "tha3/separable/fp32/noeyebrow", 85),
        character_digest(img, "tha3/separable/fp32/eyebrow", 70),
        character_digest(img, "tha3/separable/fp32/eyebrow", 100),
        character_digest(img.reshape(1024, 256, 4), "tha3/separable/fp32/eyebrow", 85),
    ]
    keys = {FrameKeys(d).key(pose) for d in variants}
    assert base not in keys and len(keys) == len(variants)
    k = FrameKeys(character_digest(img, "tha3/separable/fp32/eyebrow", 85))
    p2 = pose.copy()
    p2[44] = np.nextafter(p2[44], np.float32(2))  # one ulp
    assert k.key(p2) != base and k.key(pose) == base


def test_pose_bytes_are_normalised():
    k = FrameKeys(character_digest(np.zeros((4, 4, 4), np.uint8), "v", 85))
    p = np.zeros(45, np.float32)
    neg = p.copy()
    neg[[3, 40]] = -0.0
    assert k.key(p) == k.key(neg)  # -0.0 and 0.0 are the same pose
    assert k.key(p) == k.key(p.astype(np.float64)) == k.key(p.astype(">f4"))
    q = np.full(45, 0.3, np.float32)
    a, b = quantize_pose(q.copy(), 1 / 8), quantize_pose((q + 0.01).astype(np.float32), 1 / 8)
    assert k.key(a) == k.key(b)  # nearby poses share a key after quantisation
    tiny = quantize_pose(np.full(45, -0.001, np.float32), 1 / 8)  # rounds to -0.0 on the signed params
    assert k.key(tiny) == k.key(quantize_pose(np.zeros(45, np.float32), 1 / 8))
