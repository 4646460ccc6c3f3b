"""`ezvtb.cluster` on a local Ray instance: live cores (placement, faults) and batch renders.

One Ray instance (2 CPUs, no dashboard, no usage stats) serves the whole module; the cores are
the smallest real ones (THA3 separable fp32 on ONNX Runtime CPU, one thread, no RIFE/cache) and
every test renders only a few frames.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="ezvtb.cluster needs Ray (pip install 'ezvtb[cluster]')")

from ezvtb.pose import index  # noqa: E402

pytestmark = pytest.mark.slow

OPTS = dict(use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False, backend="cpu",
            threads=1)


def make_poses() -> list[np.ndarray]:
    a = np.zeros(45, np.float32)
    b = a.copy()
    b[index("head_y")] = 0.7
    b[index("mouth_aaa")] = 1.0
    b[index("eye_wink_left")] = 1.0
    return [a, b]


@pytest.fixture(scope="module")
def characters(sample_image_paths):
    from ezvtb import prepare_image

    by_name = {p.stem: p for p in sample_image_paths}
    return {n: (by_name[n], prepare_image(by_name[n])) for n in ("crypko_00", "crypko_01")}


@pytest.fixture(scope="module")
def local_frames(characters):
    """Frames of a local core for both characters and both poses (also exports the graphs before Ray starts)."""
    from ezvtb import get_core

    core = get_core(**OPTS)
    out = {}
    try:
        for name, (_, img) in characters.items():
            core.setImage(img)
            out[name] = [core.inference(p)[0].copy() for p in make_poses()]
    finally:
        core.close()
    return out


@pytest.fixture(scope="module")
def ray_instance(local_frames):
    from ezvtb.cluster._ray import init_local_ray

    # one logical GPU (no device needed) so that GPU fractions are placed and checked; loopback only
    init_local_ray(ray, num_cpus=2, num_gpus=1, namespace="ezvtb", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def service(ray_instance):
    from ezvtb.cluster.live import _kill_service, start_service

    svc = start_service(OPTS, replicas=2, cores_per_replica=1, cpus_per_replica=0.5, startup_timeout=600)
    yield svc
    _kill_service(svc)


def test_echo_service_validates_like_the_core_and_stays_usable(ray_instance):
    from ezvtb.cluster import Client
    from ezvtb.cluster.live import start_service
    from ezvtb.ipc.echo import EchoCore

    with pytest.raises(ValueError, match="replicas: expected an int >= 1"):
        start_service({}, engine="echo", replicas=0)
    with pytest.raises(ValueError, match=r"options: unknown get_core option\(s\) \['no_such_option'\]"):
        start_service({"no_such_option": 1})
    img = np.zeros((512, 512, 4), np.uint8)
    img[200:300, 200:300] = 255
    ref = EchoCore(frames=2)
    with pytest.raises(ValueError, match="transport: expected None, 'shm' or 'stdio'"):
        Client.spawn("tcp", engine="echo")
    # written for ezvtb.ipc.Client.spawn ("shm", slots=...): only the import changes
    with Client.spawn("shm", engine="echo", slots=3, use_interpolation=True, interpolation_scale=2,
                      cpus_per_replica=0, gpus_per_replica=0.25, timeout=60) as c:
        with pytest.raises(RuntimeError, match="setImage must be called before inference"):
            c.inference(np.zeros(45, np.float32))
        with pytest.raises(ValueError) as got:
            c.setImage(img[:, :, :3])
        with pytest.raises(ValueError) as want:
            ref.setImage(img[:, :, :3])
        assert str(got.value) == str(want.value)
        c.setImage(img)
        ref.setImage(img)
        with pytest.raises(ValueError) as got:
            c.inference(np.zeros((2, 45), np.float32))
        with pytest.raises(ValueError) as want:
            ref.inference(np.zeros((2, 45), np.float32))
        assert str(got.value) == str(want.value)
        pose = np.zeros(45, np.float32)
        pose[index("head_y")] = 0.5
        frames = c.inference(pose)
        assert c.frames_per_inference == 2 and len(frames) == 2
        for f, w in zip(frames, ref.inference(pose)):
            assert isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.shape == (512, 512, 4)
            assert not f.flags.writeable  # read from the object store, not a JSON round trip
            assert np.array_equal(f, w)
        s = c.stats()
        assert s["cluster"]["replica"]["resources"] == {"GPU": 0.25}  # the configured share of a GPU
        assert s["frames"] == 1 and s["cluster"]["client"]["frames"] == 2  # core counts calls
        # a replica killed between two calls: once Ray has restarted it, the next call re-sends the
        # image by itself and no error reaches the caller
        old_pid = c.replica_pid
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            try:
                if ray.get(c.replica.info.remote())["pid"] != old_pid:
                    break
            except ray.exceptions.RayActorError:
                pass  # dead or restarting
            assert time.monotonic() < deadline, "Ray did not restart the replica"
            time.sleep(0.05)
        for f, w in zip(c.inference(pose), ref.inference(pose)):
            assert np.array_equal(f, w)
        client = c.stats()["cluster"]["client"]
        assert client["replica_lost"] == 0 and client["images_resent"] == 1
        assert c.replica_pid != old_pid
    assert c.closed
    with pytest.raises(RuntimeError, match="closed"):
        c.inference(pose)


def test_ezvtb_serve_ray_starts_a_named_service_that_clients_connect_to(ray_instance):
    import subprocess
    import sys

    from ezvtb.cluster import Client

    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "ezvtb", "-q", "serve", "--ray", address, "--engine", "echo",
                             "--name", "cli-test", "--cpus-per-replica", "0", "-o", "use_interpolation=false"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the replicas are up
        assert "service 'cli-test'" in line, line
        img = np.zeros((512, 512, 4), np.uint8)
        img[100:200, 100:200] = 200
        with Client.connect(address, name="cli-test", timeout=60) as c:
            c.setImage(img)
            (f,) = c.inference(np.zeros(45, np.float32))
            assert np.array_equal(f, img)  # echo engine, neutral pose: the image itself
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        with pytest.raises(ConnectionError, match="no ezvtb service 'cli-test'"):
            Client.connect(address, name="cli-test")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cluster_frames_equal_local_frames_and_characters_never_mix(service, characters, local_frames):
    from ezvtb.cluster import Client

    a, b = Client(service, timeout=600), Client(service, timeout=600)
    try:
        a.setImage(characters["crypko_00"][1])
        b.setImage(characters["crypko_01"][1])
        assert {a.replica_index, b.replica_index} == {0, 1}  # one character per replica
        assert a.replica_pid != b.replica_pid
        got: dict[str, list[np.ndarray]] = {"crypko_00": [], "crypko_01": []}
        for p in make_poses():  # interleaved: the two streams alternate
            got["crypko_00"].append(a.inference(p)[0])
            got["crypko_01"].append(b.inference(p)[0])
        for name, frames in got.items():
            other = "crypko_01" if name == "crypko_00" else "crypko_00"
            for k, f in enumerate(frames):
                diff = int(np.abs(f.astype(np.int16) - local_frames[name][k].astype(np.int16)).max())
                print(f"{name} pose {k}: max abs difference cluster vs local core = {diff}")
                assert diff == 0
                assert np.abs(f.astype(np.int16) - local_frames[other][k].astype(np.int16)).max() > 50
        assert a.stats()["cluster"]["replica"]["characters"] == [a._digest]
    finally:
        a.close()
        b.close()


def test_killing_a_replica_mid_stream_is_survived(service, characters, local_frames):
    from ezvtb.cluster import Client, ReplicaLost

    c = Client(service, timeout=600)
    try:
        c.setImage(characters["crypko_00"][1])
        p0, p1 = make_poses()
        old_pid = c.replica_pid
        outcome: dict[str, object] = {}

        def render() -> None:
            try:
                outcome["frames"] = c.inference(p0)
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = e

        t = threading.Thread(target=render)
        t.start()
        deadline = time.monotonic() + 120
        while ray.get(c.replica.info.remote())["in_flight"] == 0:  # wait until the frame is being rendered
            assert t.is_alive() and time.monotonic() < deadline, "the frame never started rendering"
            time.sleep(0.005)
        os.kill(old_pid, signal.SIGKILL)
        t.join(120)
        assert not t.is_alive()
        err = outcome.get("error")
        assert isinstance(err, ReplicaLost), outcome
        assert "died during this call" in str(err) and "re-sends the image" in str(err)
        # the next call waits for Ray's restart, re-sends the image and renders normally
        f = c.inference(p1)[0]
        assert np.array_equal(f, local_frames["crypko_00"][1])
        s = c.stats()
        assert s["cluster"]["replica"]["pid"] != old_pid
        assert s["cluster"]["client"]["replica_lost"] == 1 and s["cluster"]["client"]["images_resent"] == 1
        assert np.array_equal(c.inference(p0)[0], local_frames["crypko_00"][0])
    finally:
        c.close()


def test_batch_render_matches_local_ezvtb_run_byte_for_byte_and_retries_a_dead_worker(ray_instance, characters,
                                                                                       tmp_path):
    import json

    from ezvtb.cli import main
    from ezvtb.cluster.batch import run_jobs
    from ezvtb.cluster.jobs import load_jobs

    poses = make_poses()
    np.save(tmp_path / "two.npy", np.stack(poses))
    np.save(tmp_path / "one.npy", np.stack(poses[1:]))
    img0, img1 = (str(characters[n][0]) for n in ("crypko_00", "crypko_01"))
    combos = [(img0, "two.npy"), (img1, "one.npy"), (img0, "one.npy"), (img1, "two.npy")]
    jobs_doc = {"defaults": {"fps": 20, "options": {"backend": "cpu", "threads": 1}},
                "jobs": [{"image": im, "poses": tr, "output": f"out/job{i}.mp4"} for i, (im, tr) in enumerate(combos)]}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs_doc))
    jobs = load_jobs(tmp_path / "jobs.json")
    assert [j.spec["output"] for j in jobs] == [str(tmp_path / f"out/job{i}.mp4") for i in range(4)]
    assert len({j.state_key for j in jobs}) == 1  # same options: one core per worker serves every job

    killed: dict[str, int] = {}

    def kill_when_rendering(pid: int, out: Path) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "done" not in killed:
            if list(out.parent.glob(f".{out.name}.ezvtb-*.tmp.mp4")):  # first frame written, second rendering
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.002)

    def on_event(kind: str, info: dict) -> None:
        if kind == "started" and info["job"] == 0 and info["attempt"] == 1:
            threading.Thread(target=kill_when_rendering, args=(info["pid"], Path(jobs[0].spec["output"])),
                             daemon=True).start()
        if kind == "done" and info["job"] == 0:
            killed.setdefault("done", 1)

    results = run_jobs(jobs, workers=2, cpus_per_worker=0.5, retries=2, on_event=on_event)
    assert [r.status for r in results] == ["ok"] * 4, [r.error for r in results]
    assert "pid" in killed, "the worker was not killed mid-job (job 0 finished first)"
    assert results[0].attempts == 2  # the killed attempt was retried
    assert sum(r.result["reused_state"] for r in results) >= 1  # a worker reused its core

    for i, (im, tr) in enumerate(combos):
        ref = tmp_path / f"ref/job{i}.mp4"
        rc = main(["-q", "run", "--input", f"file://{tmp_path / tr}?step=1&loop=0", "--output", f"mp4:{ref}",
                   "--fps", "20", "--image", im, "--backend", "cpu", "--threads", "1", "--no-cache",
                   "--stats-interval", "0"])
        assert rc == 0
        got = Path(jobs[i].spec["output"]).read_bytes()
        assert results[i].result["frames"] == len(np.load(tmp_path / tr))
        assert got == ref.read_bytes(), f"job {i}: the batch output differs from `ezvtb run`"
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_render_batch_cli_reports_a_failing_job_without_retrying_it(ray_instance, tmp_path, capsys):
    import json

    from ezvtb.cli import main

    np.save(tmp_path / "t.npy", np.stack(make_poses()[:1]))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a file, but no image
    (tmp_path / "jobs.json").write_text(json.dumps([{"image": "broken.png", "poses": "t.npy", "output": "o.mp4",
                                                     "options": {"backend": "cpu", "threads": 1}}]))
    rc = main(["-q", "render-batch", str(tmp_path / "jobs.json"), "--cpus-per-worker", "0.5",
               "--summary", str(tmp_path / "summary.json")])
    assert rc == 1
    assert "0/1 jobs done" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "summary.json").read_text())
    assert row["status"] == "failed" and row["attempts"] == 1  # the job's own error: no retry
    assert "broken.png" in row["error"] or "image" in row["error"].lower(), row["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "jobs.json", "summary.json", "t.npy"]


def test_a_job_whose_temporary_file_vanishes_is_retried_and_siblings_survive(ray_instance, characters, tmp_path):
    """Outputs a.mp4 and a.b.mp4 on two workers; a.b.mp4's temporary file is deleted from outside
    mid-render (what the old prefix glob of a.mp4's cleanup did): that attempt fails on its own
    output file (an OSError, outside the job), is retried and succeeds; a.mp4 is unaffected."""
    import json

    from ezvtb.cluster.batch import run_jobs
    from ezvtb.cluster.jobs import load_jobs

    poses = make_poses()
    np.save(tmp_path / "p.npy", np.stack(poses * 3))
    img = str(characters["crypko_00"][0])
    (tmp_path / "jobs.json").write_text(json.dumps({"defaults": {"fps": 20, "image": img, "poses": "p.npy",
                                                                 "options": {"backend": "cpu", "threads": 1}},
                                                    "jobs": [{"output": "a.mp4"}, {"output": "a.b.mp4"}]}))
    jobs = load_jobs(tmp_path / "jobs.json")
    removed: list[str] = []

    def remove_b_temp_once() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not removed:
            for t in tmp_path.glob(".a.b.mp4.ezvtb-*.tmp.mp4"):
                try:
                    if t.stat().st_size == 0:  # the encoder has not opened it yet: it would just recreate it
                        continue
                    t.unlink()
                except FileNotFoundError:
                    continue
                removed.append(t.name)
                return
            time.sleep(0.002)

    events: list[tuple[str, int]] = []

    def on_event(kind: str, info: dict) -> None:
        events.append((kind, info["job"]))
        if kind == "started" and info["job"] == 1 and info["attempt"] == 1:
            threading.Thread(target=remove_b_temp_once, daemon=True).start()

    results = run_jobs(jobs, workers=2, cpus_per_worker=0.5, retries=2, on_event=on_event)
    assert removed, "the temporary file was never seen"
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    assert results[0].attempts == 1 and results[1].attempts == 2 and ("retry", 1) in events
    for name in ("a.mp4", "a.b.mp4"):
        assert (tmp_path / name).stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.b.mp4", "a.mp4", "jobs.json", "p.npy"]


def test_render_batch_driver_stopped_by_sigterm_leaves_no_temporary_file(tmp_path, characters):
    """`ezvtb render-batch` (its own Ray instance) gets SIGTERM mid-job: exit, and no temporary file."""
    import json
    import subprocess
    import sys

    np.save(tmp_path / "p.npy", np.stack(make_poses() * 200))
    (tmp_path / "jobs.json").write_text(json.dumps([{"image": str(characters["crypko_00"][0]), "poses": "p.npy",
                                                     "output": "j0.mp4", "options": {"backend": "cpu", "threads": 1}}]))
    env = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("RAY_ADDRESS")
    p = subprocess.Popen([sys.executable, "-m", "ezvtb", "-q", "render-batch", str(tmp_path / "jobs.json"),
                          "--cpus-per-worker", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and p.poll() is None and not list(tmp_path.glob(".j0.mp4.ezvtb-*")):
            time.sleep(0.05)
        assert p.poll() is None and list(tmp_path.glob(".j0.mp4.ezvtb-*")), p.communicate()[0][-3000:]
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0, out[-3000:]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["jobs.json", "p.npy"], out[-3000:]
