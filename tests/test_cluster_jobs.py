"""The batch job file and the job kind registry (`ezvtb.cluster.jobs`): no Ray, no model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ezvtb.cluster import jobs as J


@pytest.fixture()
def job_dir(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((3, 45), np.float32))
    (tmp_path / "img.png").write_bytes(b"not read at parse time")
    return tmp_path


def write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_job_file_defaults_paths_and_state_keys(job_dir):
    doc = {"defaults": {"fps": 24, "options": {"backend": "cpu"}},
           "jobs": [{"image": "img.png", "poses": "t.npy", "output": "out/a.mp4"},
                    {"poses": "t.npy", "output": "out/b.raw", "options": {"threads": 1}, "background": "0,255,0"}]}
    a, b = J.load_jobs(write(job_dir / "jobs.json", doc))
    assert a.kind == b.kind == "tha-render" and a.kind_path == "ezvtb.cluster.jobs:ThaRenderKind"
    assert a.spec["image"] == str(job_dir / "img.png") and b.spec["image"] is None
    assert a.spec["output"] == str(job_dir / "out/a.mp4") and a.outputs == [a.spec["output"]]
    assert a.spec["fps"] == b.spec["fps"] == 24.0
    # options are the job defaults (`ezvtb run`'s, cache off) overlaid with the job's (merged key by key)
    assert a.spec["options"] == {**J.job_defaults().as_dict(), "backend": "cpu"}
    assert b.spec["options"] == {**J.job_defaults().as_dict(), "backend": "cpu", "threads": 1}
    assert a.spec["options"]["use_cacher"] is False and a.spec["options"]["use_interpolation"] is False
    assert a.state_key != b.state_key  # different options: a worker reloads between them


@pytest.mark.parametrize("job, message", [
    ({"poses": "t.npy"}, "job 0: output: expected a path"),
    ({"poses": "missing.npy", "output": "o.mp4"}, "job 0: poses: no such file"),
    ({"poses": "t.npy", "output": "o.mp4", "image": "nope.png"}, "job 0: image: no such file"),
    ({"poses": "t.npy", "output": "o.mp4", "fps": 0}, "job 0: fps: expected a number > 0"),
    ({"poses": "t.npy", "output": "o.mp4", "background": "blue"}, "job 0: background: expected"),
    ({"poses": "t.npy", "output": "o.mp4", "options": {"use_rtx": True}},
     r"job 0: options: unknown get_core option\(s\) \['use_rtx'\]"),
    ({"poses": "t.npy", "output": "o.mp4", "frames": 3}, r"job 0: unknown field\(s\) \['frames'\]"),
    ({"kind": "text-to-video", "prompt": "a cat"}, "job 0: kind: expected one of"),
])
def test_bad_jobs_are_refused_naming_the_job_and_field(job_dir, job, message):
    with pytest.raises(ValueError, match=message):
        J.load_jobs(write(job_dir / "jobs.json", [job]))


def test_job_file_errors(job_dir):
    with pytest.raises(ValueError, match="JOBS: no such file"):
        J.load_jobs(job_dir / "none.json")
    (job_dir / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="JOBS: cannot read"):
        J.load_jobs(job_dir / "bad.json")
    with pytest.raises(ValueError, match="JOBS: expected a non-empty list"):
        J.load_jobs(write(job_dir / "jobs.json", {"jobs": []}))
    same = {"poses": "t.npy", "output": "o.mp4"}
    with pytest.raises(ValueError, match="job 1: output .* is also the output of job 0"):
        J.load_jobs(write(job_dir / "jobs.json", [same, same]))


class EchoKind(J.JobKind):
    """A job kind for the registry test: copies its `text` into its output."""

    name = "echo-text"

    def parse(self, spec, base, index):
        if not isinstance(spec.get("text"), str):
            raise ValueError(f"job {index}: text: expected a string")
        out = str(base / spec["output"])
        return J.Job(index, self.name, J.job_kinds()[self.name], {"text": spec["text"], "output": out}, self.name,
                     [out])

    def load(self, job):
        return str.upper

    def run(self, state, job):
        from ezvtb.atomic import atomic_write

        with atomic_write(job.spec["output"], "w") as f:
            f.write(state(job.spec["text"]))
        return {"chars": len(job.spec["text"])}


def test_a_new_job_kind_plugs_into_the_registry(job_dir):
    with pytest.raises(ValueError, match="kind: expected a JobKind subclass"):
        J.register_job_kind("x", dict)
    with pytest.raises(ValueError, match="name: expected a non-empty string"):
        J.register_job_kind("", EchoKind)
    J.register_job_kind("echo-text", EchoKind)
    try:
        assert J.job_kinds()["echo-text"] == f"{__name__}:EchoKind"
        jobs = J.load_jobs(write(job_dir / "jobs.json", [{"kind": "echo-text", "text": "hi", "output": "hi.txt"},
                                                         {"poses": "t.npy", "output": "o.mp4"}]))
        assert [j.kind for j in jobs] == ["echo-text", "tha-render"]
        kind = J.resolve_kind(jobs[0].kind_path)  # what a worker does with the path it receives
        assert kind.run(kind.load(jobs[0]), jobs[0]) == {"chars": 2}
        assert (job_dir / "hi.txt").read_text() == "HI"
    finally:
        J._REGISTRY.pop("echo-text", None)
