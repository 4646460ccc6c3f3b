"""Batch jobs: the job file, the job kind registry and the built-in ``tha-render`` kind.

A job file (JSON) is a list of job objects, or ``{"defaults": {...}, "jobs": [...]}`` where
every job starts from ``defaults``. Relative paths are resolved against the job file's folder.
Each job names its ``kind`` (default ``tha-render``); the kind validates the job in the driver
(`JobKind.parse`, before anything runs) and runs it in a worker (`JobKind.run`).

``tha-render`` (the realtime core rendering a recorded performance)::

    {"image": "alice.png",            # character (prepare_image); omitted/null = sample crypko_00
     "poses": "alice_take1.npy",      # (N, 45) poses, .npy or .json (ezvtb.live.sources.load_poses)
     "output": "out/alice_take1.mp4", # .mp4 (H.264, alpha over background), .webm (alpha kept) or raw BGRA
     "fps": 30, "background": "#FFFFFF",
     "options": {"backend": "cpu"}}    # get_core keywords over `job_defaults()`

The output is what ``ezvtb run --input "file://POSES?step=1&loop=0" --output mp4:OUTPUT --fps FPS
--background BG --image IMAGE --no-cache [flags for the same options]`` writes, byte for byte: the same
loaders, the same sink (`ezvtb.live.sinks.open_sink`), every pose rendered once in order. Sinks
write to a temporary sibling named after the attempt and rename on success, so no output is ever
half-written. No output may be another output or any job's input (compared as resolved files). The job's
options start from `job_defaults()`: ``ezvtb run``'s defaults with the output cache off (with
``use_cacher`` a reused core may answer from frames an earlier job cached, decoded from its JPEG
codec, so byte identity then needs ``cacher_quality=100``).

New kinds (text-to-video, orbit, speech) subclass `JobKind` and call `register_job_kind`; the
kind travels to workers as an import path (``module:ClassName``), so its module must be
importable on every node.
"""
from __future__ import annotations

import copy
import importlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ezvtb.options import CoreOptions, command_line_defaults
from ezvtb.weights.tha3 import load_character

log = logging.getLogger("ezvtb.cluster")

DEFAULT_KIND = "tha-render"


@dataclass
class Job:
    """One validated job: what the driver schedules and a worker runs (picklable, plain data).

    `state_key` names the heavy state the job needs loaded (a core with these options): a worker
    whose state has the same key runs it without reloading. `outputs` are the files it writes,
    `inputs` the files it reads. `attempt` names the current attempt (set by the scheduler): the
    kind puts it in its temporary file names (`ezvtb.atomic.temp_name`), so `cleanup` removes
    exactly that attempt's files.
    """

    index: int
    kind: str
    kind_path: str
    spec: dict[str, Any]
    state_key: str
    outputs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    attempt: str | None = None

    @property
    def label(self) -> str:
        return f"job {self.index} ({self.kind}: {', '.join(self.outputs) or '-'})"


class JobKind:
    """Base class of a job kind. Subclasses set `name` and implement the four methods.

    parse(spec, base, index) -> Job: validate in the driver (ValueError naming the field), resolve
        paths against `base`; never loads models.
    load(job) -> state: build what the job needs (models) in a worker; reused by every later job
        with the same `state_key` on that worker.
    run(state, job) -> dict: do the job, write outputs atomically (temporary names carrying
        `job.attempt`), return a JSON-able summary. An OSError (files, disk) counts as a failure
        outside the job and is retried; any other error is the job's own and is not.
    cleanup(job): remove what attempt `job.attempt` may have left (its temporary files) after its
        worker died or failed.
    close_state(state): release a state the worker replaces.
    """

    name = ""

    def parse(self, spec: dict[str, Any], base: Path, index: int) -> Job:
        raise NotImplementedError

    def load(self, job: Job) -> Any:
        raise NotImplementedError

    def run(self, state: Any, job: Job) -> dict[str, Any]:
        raise NotImplementedError

    def cleanup(self, job: Job) -> None:
        pass

    def close_state(self, state: Any) -> None:
        close = getattr(state, "close", None)
        if callable(close):
            close()


_REGISTRY: dict[str, str] = {}
_LOADED: dict[str, JobKind] = {}


def register_job_kind(name: str, kind: str | type[JobKind]) -> None:
    """Register a job kind under `name`: a `JobKind` subclass or its ``module:ClassName`` path.

    The class must be importable by that path in every worker (a class defined in ``__main__``
    is not); a name already registered is replaced.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if isinstance(kind, type):
        if not issubclass(kind, JobKind):
            raise ValueError(f"kind: expected a JobKind subclass, got {kind!r}")
        if kind.__module__ == "__main__":
            raise ValueError(f"kind: {kind.__name__} is defined in __main__, which workers cannot import; "
                             "move it into a module")
        path = f"{kind.__module__}:{kind.__qualname__}"
    elif isinstance(kind, str) and ":" in kind:
        path = kind
    else:
        raise ValueError(f"kind: expected a JobKind subclass or 'module:ClassName', got {kind!r}")
    _REGISTRY[name] = path
    _LOADED.pop(path, None)


def job_kinds() -> dict[str, str]:
    """{name: import path} of the registered job kinds."""
    return dict(_REGISTRY)


def resolve_kind(path: str) -> JobKind:
    """The `JobKind` instance for an import path (cached per process)."""
    kind = _LOADED.get(path)
    if kind is None:
        module, _, attr = path.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        kind = obj()
        if not isinstance(kind, JobKind):
            raise ValueError(f"job kind {path!r} is not a JobKind")
        _LOADED[path] = kind
    return kind


def load_jobs(path: str | os.PathLike) -> list[Job]:
    """Parse and validate a job file (module docstring); ValueError naming the job and field."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"JOBS: no such file {str(p)!r}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"JOBS: cannot read {str(p)!r} as JSON ({e})") from None
    defaults: dict[str, Any] = {}
    if isinstance(doc, dict):
        defaults = doc.get("defaults", {})
        doc = doc.get("jobs")
        if not isinstance(defaults, dict):
            raise ValueError("JOBS: 'defaults' must be an object")
    if not isinstance(doc, list) or not doc:
        raise ValueError(f"JOBS: expected a non-empty list of jobs (or {{'jobs': [...]}}) in {str(p)!r}")
    return parse_jobs(doc, base=p.resolve().parent, defaults=defaults)


def parse_jobs(specs: list[dict[str, Any]], base: str | os.PathLike = ".", defaults: dict[str, Any] | None = None
               ) -> list[Job]:
    """Validate job dicts (module docstring) into `Job`s; outputs must be distinct files (resolved
    paths and links compared) and none may be any job's input (`ezvtb.outputs.check_outputs`)."""
    from ezvtb.outputs import check_outputs

    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(specs):
        if not isinstance(raw, dict):
            raise ValueError(f"job {i}: expected an object, got {type(raw).__name__}")
        spec = _merge(defaults or {}, raw)
        name = spec.pop("kind", DEFAULT_KIND)
        if name not in _REGISTRY:
            raise ValueError(f"job {i}: kind: expected one of {sorted(_REGISTRY)}, got {name!r}")
        job = resolve_kind(_REGISTRY[name]).parse(spec, Path(base), i)
        for out in job.outputs:
            if out in seen:
                raise ValueError(f"job {i}: output {out!r} is also the output of job {seen[out]}")
            seen[out] = i
        jobs.append(job)
    check_outputs([(f"job {j.index}: output", o) for j in jobs for o in j.outputs],
                  [(f"job {j.index}'s input", p) for j in jobs for p in j.inputs])
    return jobs


def _merge(defaults: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


# --- tha-render --------------------------------------------------------------------------------
def job_defaults() -> CoreOptions:
    """The core options a tha-render job starts from: ``ezvtb run``'s (`command_line_defaults`) with the
    output cache off (a worker's core serves several jobs; with the cache on, a pose an earlier job rendered
    would come back from the cache, JPEG-decoded, instead of rendered)."""
    return command_line_defaults().replace(use_cacher=False)


class ThaRenderKind(JobKind):
    """Render a pose trace with the realtime core into a video (module docstring)."""

    name = "tha-render"
    FIELDS = {"image", "poses", "output", "fps", "background", "options"}

    def parse(self, spec: dict[str, Any], base: Path, index: int) -> Job:
        from ezvtb.video import parse_color

        where = f"job {index}"
        unknown = sorted(set(spec) - self.FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(self.FIELDS)}")
        for key in ("poses", "output"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise ValueError(f"{where}: {key}: expected a path, got {spec.get(key)!r}")
        poses = _resolve(base, spec["poses"])
        if not poses.is_file():
            raise ValueError(f"{where}: poses: no such file {str(poses)!r}")
        image = spec.get("image")
        if image is not None:
            if not isinstance(image, str) or not image:
                raise ValueError(f"{where}: image: expected a path or null, got {image!r}")
            image = str(_resolve(base, image))
            if not Path(image).is_file():
                raise ValueError(f"{where}: image: no such file {image!r}")
        output = _resolve(base, spec["output"])
        if output.suffix.lower() not in (".mp4", ".webm"):
            from ezvtb.live.sinks import RAW_REFUSED_SUFFIXES

            if output.suffix.lower() in RAW_REFUSED_SUFFIXES:
                raise ValueError(f"{where}: output: expected .mp4, .webm or a raw BGRA file (.bgra, .raw), "
                                 f"got {str(output)!r}")
        fps = spec.get("fps", 30.0)
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"{where}: fps: expected a number > 0, got {fps!r}")
        background = spec.get("background", "#FFFFFF")
        try:
            parse_color(str(background))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        options = spec.get("options", {})
        if not isinstance(options, dict):
            raise ValueError(f"{where}: options: expected an object of get_core keywords, got {options!r}")
        opts = CoreOptions.from_mapping(options, base=job_defaults(), where=f"{where}: options").as_dict()
        norm = {"image": image, "poses": str(poses), "output": str(output), "fps": float(fps),
                "background": str(background), "options": opts}
        key = json.dumps({"kind": self.name, "options": opts}, sort_keys=True, default=str)
        return Job(index, self.name, _REGISTRY[self.name], norm, key, [str(output)],
                   [p for p in (str(poses), image) if p is not None])

    def load(self, job: Job) -> Any:
        from ezvtb.factory import build_core  # the core assembly imports the stages and their runtimes

        return build_core(CoreOptions.from_mapping(job.spec["options"]))

    def run(self, core: Any, job: Job) -> dict[str, Any]:
        from ezvtb.live.sinks import open_sink
        from ezvtb.live.sources import load_poses
        from ezvtb.video import parse_color

        s = job.spec
        poses = load_poses(s["poses"], "poses")
        image = load_character(s["image"])
        out_fps = s["fps"] * CoreOptions.from_mapping(s["options"]).frames_per_pose
        Path(s["output"]).parent.mkdir(parents=True, exist_ok=True)
        sink = open_sink(_sink_url(s["output"]), out_fps, parse_color(s["background"]), token=job.attempt)
        frames = 0
        try:
            core.setImage(image)
            for pose in poses:
                for frame in core.inference(pose):
                    sink.write(frame)
                    frames += 1
        except BaseException:
            sink.abort()
            raise
        sink.close()
        return {"output": s["output"], "poses": int(len(poses)), "frames": frames}

    def cleanup(self, job: Job) -> None:
        from ezvtb.atomic import temp_name

        if job.attempt is None:
            return
        leftover = temp_name(job.spec["output"], job.attempt)
        try:
            leftover.unlink()
            log.info("%s: removed %s left by attempt %s", job.label, leftover, job.attempt)
        except FileNotFoundError:
            pass


def _sink_url(output: str) -> str:
    suffix = Path(output).suffix.lower()
    return f"{suffix[1:]}:{output}" if suffix in (".mp4", ".webm") else f"raw:{output}"


def _resolve(base: Path, path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base / p)


register_job_kind(DEFAULT_KIND, ThaRenderKind)
