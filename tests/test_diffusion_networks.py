"""`NetworkSet` (the generative pipelines' base), the runner's eager path and the shared guidance on small
torch modules (no export: the exported side of every pipeline is covered by its `PipelineContract` class)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ezvtb.diffusion.guidance import grid_guidance_scales, guidance_scales, guided_model  # noqa: E402
from ezvtb.diffusion.networks import NetworkSet, check_source, runtime_for  # noqa: E402
from ezvtb.engines.runner import GraphRunner  # noqa: E402


def test_runtime_comes_from_the_engines_policy():
    assert runtime_for("torch", "cpu") == ("torch", "fp32")
    assert runtime_for("auto", "cpu") == ("cpu", "fp32")  # a CPU device pins auto to the CPU backend
    assert runtime_for("cpu", "cpu", half=None) == ("cpu", "fp32")  # policy: no half precision on the CPU
    assert runtime_for("cpu", "cpu", half=True) == ("cpu", "fp16")  # an explicit choice is honoured
    assert runtime_for("cuda", "cpu", half=None) == ("cuda", "fp16")
    with pytest.raises(ValueError, match="backend"):
        runtime_for("onnx", "cpu")
    with pytest.raises(ValueError, match="device"):
        runtime_for("torch", "gpu0")


def _net(lifetime="persistent", backend="torch"):
    nets = NetworkSet()
    nets.init_networks(backend=backend, device="cpu", lifetime=lifetime)
    lin = torch.nn.Linear(3, 2).double()
    nets.add_network("lin", lin, lambda s: None)
    return nets, lin


def test_eager_runner_casts_inputs_to_the_module_and_outputs_back_without_autograd():
    nets, lin = _net()
    x = torch.randn(4, 3, requires_grad=True)
    with nets.stage("lin") as run:
        y = run(x)
    assert y.dtype == torch.float32 and not y.requires_grad
    assert torch.allclose(y, lin(x.double()).float().detach())
    # the runner by itself (training's use): gradients flow, no copies when nothing differs
    plain = GraphRunner(lin, lambda s: None, name="lin", backend="torch")
    xd = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    plain(xd).sum().backward()
    assert xd.grad is not None


def test_lifetimes_names_and_progress():
    nets, _ = _net("persistent")
    assert nets.network("lin") is nets.network("lin")
    with pytest.raises(ValueError, match="network: expected one of \\['lin'\\]"):
        nets.network("unet")
    staged, _ = _net("stage")
    with pytest.raises(ValueError, match="per-stage"):
        staged.network("lin")
    with staged.stage("lin") as a, staged.stage("lin") as b:
        assert a is not b  # a runner per stage, closed after it
    with pytest.raises(ValueError, match="lifetime"):
        NetworkSet().init_networks(backend="torch", lifetime="forever")
    seen = []
    nets.progress_callback = lambda stage, done, total: seen.append((stage, done, total))
    assert list(nets.steps(range(3), "chunks", progress=False)) == [0, 1, 2]
    nets.step_callback("denoise", 2)(0, None, None)
    assert seen == [("chunks", 1, 3), ("chunks", 2, 3), ("chunks", 3, 3), ("denoise", 1, 2)]
    with nets:
        pass
    assert nets.open_sessions == 0


def test_check_source_names_the_argument(tmp_path):
    assert check_source(tmp_path, "model_path", "folder") == tmp_path
    with pytest.raises(ValueError, match="model_path: no file"):
        check_source(tmp_path / "x.safetensors", "model_path")
    with pytest.raises(ValueError, match="ckpt: expected a path"):
        check_source(3, "ckpt")


def test_grid_scales_and_the_unguided_shortcut():
    st = grid_guidance_scales("spatiotemporal", 2, 3, 2.0, 1.0)
    assert torch.allclose(st, torch.tensor([1.0, 1.5, 1.0, 1.5, 2.0, 1.5]))
    assert torch.allclose(grid_guidance_scales("linear", 2, 3, 2.0), guidance_scales("linear", 6, 2.0))
    with pytest.raises(ValueError, match="kind"):
        grid_guidance_scales("diagonal", 2, 3, 2.0)
    calls = []

    def model(x, t, c):
        calls.append(x.shape[0])
        return x * c

    x, c, u = torch.ones(2, 3), torch.full((2, 3), 2.0), torch.zeros(2, 3)
    assert torch.equal(guided_model(model, (c,), (u,), 1.0, frame_axis=1)(x, 0), x * 2)
    assert calls == [2]  # scale 1: one conditional call
    out = guided_model(model, (c,), (u,), 3.0, frame_axis=1)(x, 0)
    assert torch.equal(out, x * 6) and calls == [2, 4]  # batched: one call of [uncond, cond]
    out2 = guided_model(model, (c,), (u,), 3.0, frame_axis=1, batched=False)(x, 0)
    assert torch.equal(out2, out) and calls == [2, 4, 2, 2]
