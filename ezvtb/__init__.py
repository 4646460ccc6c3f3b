"""ezvtb: realtime THA3 character animation (ONNX Runtime / TensorRT).

    from ezvtb import get_core
    core = get_core(use_tensorrt=False, use_interpolation=False, use_cacher=False)
    core.setImage(cv2.imread("character.png", cv2.IMREAD_UNCHANGED))
    frames = core.inference(pose)   # list of np.uint8 (512, 512, 4) BGRA, reused next call
"""
from __future__ import annotations

import logging

logging.getLogger("ezvtb").addHandler(logging.NullHandler())

__version__ = "0.1.0"

from ezvtb.core import Core  # noqa: E402
from ezvtb.factory import get_core  # noqa: E402
from ezvtb.image import prepare_image  # noqa: E402

__all__ = ["Core", "get_core", "prepare_image", "__version__"]
