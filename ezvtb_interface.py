"""Seed-compatible entry point: ``from ezvtb_interface import get_core``."""
from ezvtb import get_core

__all__ = ["get_core"]
