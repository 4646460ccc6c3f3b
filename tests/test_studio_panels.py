"""The studio's panel logic without a browser: option controls come from the CLI's own flags, pose files,
live source URLs, the output folder's names, and the command line (loopback by default)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the studio needs the web extra (pip install 'ezvtb[web]')")

from ezvtb.cli.core_options import add_core_arguments  # noqa: E402
from ezvtb.options import CoreOptions  # noqa: E402
from ezvtb.pose import PARAMETER_NAMES, index  # noqa: E402
from ezvtb.studio import panels  # noqa: E402
from ezvtb.studio.options import core_kwargs_from, option_fields  # noqa: E402


def core_kwargs(args):
    return CoreOptions.from_args(args).as_dict()


def test_option_controls_are_the_cli_flags_with_their_help_and_defaults():
    p = argparse.ArgumentParser()
    add_core_arguments(p)
    flags = {a.option_strings[0]: a for a in p._actions if a.option_strings and a.dest not in ("help", "image")}
    fields = option_fields()
    assert [f["flag"] for f in fields] == list(flags)
    for f in fields:
        a = flags[f["flag"]]
        assert f["default"] == a.default and f["help"] and f["name"] == a.dest
    assert core_kwargs_from({}) == core_kwargs(p.parse_args([]))
    assert core_kwargs_from({"backend": "cpu", "interpolation": 2, "cache": True, "half": False}) == \
        core_kwargs(p.parse_args(["--backend", "cpu", "--interpolation", "2", "--cache", "--no-half"]))
    with pytest.raises(ValueError, match="--backend"):
        core_kwargs_from({"backend": "tpu"})
    with pytest.raises(ValueError, match="--interpolation"):
        core_kwargs_from({"interpolation": 7})
    with pytest.raises(ValueError, match="unknown option"):
        core_kwargs_from({"colour": "red"})


def test_pose_json_round_trip_and_clear_errors():
    pose = np.zeros(45, np.float32)
    pose[index("mouth_aaa")], pose[index("head_y")] = 0.75, -0.5
    data = json.dumps(panels.pose_to_json(pose)).encode()
    assert np.array_equal(panels.pose_from_json(data), pose)
    assert np.array_equal(panels.pose_from_json(json.dumps(pose.tolist()).encode()), pose)
    assert np.array_equal(panels.pose_from_json(json.dumps({"poses": [pose.tolist()] * 3}).encode()), pose)
    assert panels.pose_from_json(b'{"mouth_aaa": 2.0}')[index("mouth_aaa")] == 1.0  # clipped to its range
    for bad, match in ((b"{", "not a JSON file"), (b'{"mouth_xyz": 1}', "unknown parameter"),
                       (b"[1, 2, 3]", "45 numbers"), (b'{"mouth_aaa": "wide"}', "finite number"),
                       (b"\xff\xfe", "not a JSON file")):
        with pytest.raises(ValueError, match=match):
            panels.pose_from_json(bad, "pose.json")
    assert sorted(n for g in panels.poser_layout()["groups"] for n in (p["name"] for p in g["params"])) == \
        sorted(PARAMETER_NAMES)
    for name in panels.PRESETS:
        assert panels.preset_pose(name).shape == (45,)


def test_live_urls_follow_ezvtb_run_and_typed_paths_must_exist(tmp_path):
    assert panels.live_url({"source": "trace", "fps": 10}) == ("trace://?fps=10", None)
    assert panels.live_url({"source": "vmc"})[0] == "vmc://127.0.0.1:39539"
    poses = tmp_path / "my poses.json"
    poses.write_text(json.dumps([[0.0] * 45]))
    url, _ = panels.live_url({"source": "file", "path": str(poses), "fps": 30})
    assert url.startswith("file://") and "my%20poses.json" in url
    speech = tmp_path / "s.wav"
    speech.write_bytes(b"RIFF")
    url, audio = panels.live_url({"source": "osf", "audio": "file", "audio_path": str(speech)})
    assert url == "osf://127.0.0.1:11573" and audio.startswith("audio://") and "loop=1" in audio
    with pytest.raises(FileNotFoundError, match="path: no file"):
        panels.live_url({"source": "file", "path": str(tmp_path / "missing.json")})
    with pytest.raises(ValueError, match="needs the phone's address"):
        panels.live_url({"source": "ifm"})
    assert panels.live_url({"source": "webcam", "mirror": True}) == (panels.BROWSER_CAMERA + "?mirror=1", None)
    assert panels.live_url({"source": "cam", "address": "1"})[0] == "cam://1"
    with pytest.raises(ValueError, match="is a number"):
        panels.live_url({"source": "cam", "address": "/dev/video0; rm"})
    with pytest.raises(ValueError, match="fps"):
        panels.live_url({"source": "trace", "fps": -1})
    with pytest.raises(ValueError, match="needs a tracker source"):
        panels.live_url({"source": "mic", "audio": "mic"})
    assert poses.read_text() == json.dumps([[0.0] * 45])  # typed paths are only read


def test_output_folder_names_are_its_own(tmp_path):
    folder = panels.OutputFolder(tmp_path / "out")
    p = folder.new_path("speak", ".webm")
    assert p.parent == folder.root and p.name.startswith("speak-")
    p.write_bytes(b"x")
    assert folder.resolve(p.name) == p
    (tmp_path / "secret.txt").write_text("no")
    for name in ("../secret.txt", "..", ".hidden", "/etc/passwd", "a/b"):
        with pytest.raises(ValueError, match="made by the studio"):
            folder.resolve(name)
    with pytest.raises(FileNotFoundError):
        folder.resolve("speak-none.webm")


def test_character_messages_and_errors(sample_image_paths):
    import cv2

    data = sample_image_paths[0].read_bytes()
    img, msgs = panels.prepare_character(data, "c.png")
    assert img.shape == (512, 512, 4) and msgs[0] == "c.png: 512x512, 4 channel(s), uint8"
    opaque = np.dstack([np.full((100, 400, 3), 200, np.uint8), np.full((100, 400), 255, np.uint8)])
    wide = cv2.imencode(".png", opaque)[1]
    img, msgs = panels.prepare_character(wide.tobytes(), "wide.png")
    text = " | ".join(msgs)
    assert "scaled up to 512x128" in text and "padded to 512x512" in text and "fully opaque" in text
    assert (img[128:, :, 3] == 0).all()
    with pytest.raises(ValueError, match="bad.png.*not an image"):
        panels.prepare_character(b"hello", "bad.png")
    with pytest.raises(ValueError, match="no alpha"):
        panels.prepare_character(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "rgb.png")
    with pytest.raises(ValueError, match="is empty"):
        panels.prepare_character(b"", "empty.png")


def test_cli_binds_loopback_by_default_and_warns_for_other_hosts():
    from ezvtb.cli import build_parser
    from ezvtb.cli.studio import host_warning

    args = build_parser().parse_args(["studio"])
    assert args.host == "127.0.0.1" and host_warning(args.host) is None
    assert host_warning("::1") is None and host_warning("localhost") is None
    assert "reachable from other machines" in host_warning("0.0.0.0")
