"""Errors raised by the engine layer."""


class BackendUnavailableError(RuntimeError):
    """The requested backend (execution provider, TensorRT, driver) cannot run here."""
