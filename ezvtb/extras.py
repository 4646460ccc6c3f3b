"""ezvtb's optional Python extras, by the modules they provide, and the error that names a missing one.

`EXTRAS` restates pyproject.toml's optional dependencies as importable module names (a test keeps them equal);
the GPU extras, which bring an ONNX Runtime build rather than a module, are named by
`ezvtb.engines.install.backend_install_hint`. `require(extra, what)` raises `MissingExtraError` before any work
when a module of `extra` is missing; `explain(error)` turns a bare ``ModuleNotFoundError`` into the same advice.
"""
from __future__ import annotations

import importlib.util

# extra -> the top-level modules it installs (pyproject.toml, [project.optional-dependencies])
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("torch", "onnx", "onnxscript"),
    "io": ("pythonosc",),
    "codecs": ("lz4", "qoi"),
    "diffusion": ("torch", "onnx", "onnxscript", "diffusers", "transformers", "safetensors", "einops", "PIL", "yaml"),
    "audio": ("scipy", "soundfile"),
    "mic": ("sounddevice",),
    "cluster": ("ray",),
    "turbojpeg": ("turbojpeg",),
    "web": ("fastapi", "uvicorn", "websockets"),
}


class MissingExtraError(ImportError):
    """A feature's optional dependencies are not installed; the message names the extra to install."""


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found by name; none is imported)."""
    if extra not in EXTRAS:
        raise ValueError(f"extra: expected one of {sorted(EXTRAS)}, got {extra!r}")
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def install_hint(extra: str) -> str:
    return f"pip install 'ezvtb[{extra}]'" + (" (install torch==2.13.0 first for the CPU build of torch)"
                                              if "torch" in EXTRAS[extra] else "")


def require(extra: str, what: str) -> None:
    """Raise `MissingExtraError` naming `extra` when one of its modules is missing; `what` needs it."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(f"{what} needs the `{extra}` extra ({', '.join(absent)} not installed): "
                                f"{install_hint(extra)}")


def explain(error: ImportError) -> str:
    """The message for an import failure: for a module of an extra, which extra to install."""
    if isinstance(error, MissingExtraError):
        return str(error)
    name = (getattr(error, "name", None) or "").split(".")[0]
    extras = [e for e, modules in EXTRAS.items() if name in modules]
    if not extras:
        return f"{type(error).__name__}: {error}"
    names = " or ".join(f"`{e}`" for e in extras)
    return f"{error}: `{name}` comes with the {names} extra: {install_hint(extras[0])}"
