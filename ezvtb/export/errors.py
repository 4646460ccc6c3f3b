"""`ExportError`: the one error of every exporter (THA3, RIFE, SR, face tracking, any module)."""
from __future__ import annotations


class ExportError(RuntimeError):
    """The exporter failed, or produced a graph that does not match its spec or its PyTorch module."""


__all__ = ["ExportError"]
