"""Keep the exporter's known warnings out of the user's terminal.

`torch.onnx.export` (TorchScript tracing) emits `TracerWarning`s and `UserWarning`s for
constructs that are deliberate in our models (constants registered in the trace, static shapes,
constant folding notes). A first run would print screens of them. `quiet_export` records every
warning raised inside it and sends each distinct one to the debug log (logger
``ezvtb.export.warnings``, shown by ``ezvtb -vv``); console log lines emitted meanwhile go
through tqdm so they never break a progress bar.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

log = logging.getLogger("ezvtb.export.warnings")


class CapturedWarnings:
    """What `quiet_export` caught: ``count`` warnings, ``distinct`` after de-duplication."""

    def __init__(self) -> None:
        self.count = 0
        self.distinct = 0

    def __str__(self) -> str:
        return f"{self.count} exporter warnings in the debug log" if self.count else "no exporter warnings"


@contextlib.contextmanager
def quiet_export(what: str) -> Iterator[CapturedWarnings]:
    """Capture warnings raised while exporting `what`; log them at DEBUG level, once each."""
    captured = CapturedWarnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield captured
        finally:
            seen: set[tuple[str, str, int]] = set()
            for w in caught:
                key = (str(w.message), w.filename, w.lineno)
                captured.count += 1
                if key in seen:
                    continue
                seen.add(key)
                log.debug("%s: %s at %s:%d: %s", what, w.category.__name__, w.filename, w.lineno, w.message)
            captured.distinct = len(seen)


@contextlib.contextmanager
def progress_logging() -> Iterator[None]:
    """Console log records go through ``tqdm.write`` while a progress bar is on screen."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        yield
        return
    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        yield
