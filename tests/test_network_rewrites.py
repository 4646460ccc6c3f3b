"""The export-time rewrites of the generative networks (`ezvtb.export.network_rewrites`).

Each stand-in block computes what the diffusers block computes: in torch (inside `rewritten`, max abs
difference printed and bounded) and as an exported graph on ONNX Runtime. `rewritten` leaves the module
exactly as it was; the rewrites are part of the cache key; a backend gets the rewrites measured on it.
The whole tiny UNet3D with every rewrite is checked against torch in test_diffusion_sampling_ort (1e-4).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from ezvtb.diffusion.unet3d import UNet3DStep, randomize_parameters, unet3d  # noqa: E402
from ezvtb.engines.base import GraphSpec, TensorSpec  # noqa: E402
from ezvtb.engines.runner import GraphRunner  # noqa: E402
from ezvtb.export.exporter import export_bytes, export_key, export_module  # noqa: E402
from ezvtb.export.network_rewrites import (  # noqa: E402
    CONTRIB_REWRITES,
    PORTABLE_REWRITES,
    REWRITES,
    check_rewrites,
    rewrites_for,
    rewritten,
)


class Blocks(torch.nn.Module):
    """A spatial transformer (self + cross attention, GEGLU feed-forward) and a temporal conv layer of
    diffusers, as the UNet3D uses them: sample (b, c, f, h, w), context (b*f, L, D)."""

    def __init__(self, c: int = 64, heads: int = 4, ctx: int = 32) -> None:
        super().__init__()
        from diffusers.models.resnet import TemporalConvLayer
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        self.spatial = Transformer2DModel(heads, c // heads, in_channels=c, cross_attention_dim=ctx,
                                          norm_num_groups=32)
        self.temporal = TemporalConvLayer(c, c, norm_num_groups=32)
        randomize_parameters(self, seed=5)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        y = self.spatial(y, encoder_hidden_states=context, return_dict=False)[0]
        return self.temporal(y, num_frames=f)


SHAPES = ((1, 64, 4, 8, 8), (4, 7, 32))
# what the blocks alone take: frame_shared_context needs the UNet3D that repeats the context per frame
BLOCK_REWRITES = tuple(r for r in REWRITES if r != "frame_shared_context")
SPEC = GraphSpec("blocks", (TensorSpec("x", SHAPES[0], "float32"), TensorSpec("context", SHAPES[1], "float32")),
                 (TensorSpec("y", (4, 64, 8, 8), "float32"),))


@pytest.fixture(scope="module")
def blocks():
    g = torch.Generator().manual_seed(0)
    return Blocks().eval(), torch.randn(SHAPES[0], generator=g), torch.randn(SHAPES[1], generator=g)


def _out(m, *xs):
    with torch.no_grad():
        return m(*xs)


def test_names_and_backend_choice():
    assert set(CONTRIB_REWRITES) | set(PORTABLE_REWRITES) == set(REWRITES)
    assert not set(CONTRIB_REWRITES) & set(PORTABLE_REWRITES)
    assert rewrites_for("cpu") == REWRITES
    assert rewrites_for("cpu", "fp16") == PORTABLE_REWRITES
    for backend in ("torch", "cuda", "tensorrt", "trt", "directml"):
        assert rewrites_for(backend) == (), backend
    assert check_rewrites(["split_geglu", "temporal_conv2d", "split_geglu"]) == ("split_geglu", "temporal_conv2d")
    with pytest.raises(ValueError, match="rewrites: unknown \\['flash'\\]"):
        check_rewrites(["flash"])
    with pytest.raises(ValueError, match="rewrites: expected a sequence"):
        check_rewrites("split_geglu")
    with pytest.raises(ValueError, match="rewrites: unknown"):  # refused when the runner is built, not later
        GraphRunner(torch.nn.Linear(2, 2), lambda s: SPEC, name="x", backend="cpu", rewrites=["nope"])


@pytest.mark.parametrize("rewrite", BLOCK_REWRITES)
def test_each_stand_in_computes_the_same_in_torch(blocks, rewrite):
    m, x, ctx = blocks
    ref = _out(m, x, ctx)
    keys = list(m.state_dict())
    with rewritten(m, [rewrite]) as counts:
        got = _out(m, x, ctx)
    err = float((got - ref).abs().max())
    print(f"{rewrite}: {counts} replaced, torch max abs {err:.1e}")
    assert counts[rewrite] == {"fused_attention": 2, "temporal_conv2d": 4, "split_geglu": 1,
                               "single_key_attention": 2}[rewrite]
    assert err <= 1e-5
    assert list(m.state_dict()) == keys  # put back exactly
    assert torch.equal(_out(m, x, ctx), ref)


@pytest.mark.parametrize("rewrites", [(r,) for r in BLOCK_REWRITES] + [REWRITES], ids=lambda r: "+".join(r))
def test_exported_rewrites_match_torch_on_onnxruntime(blocks, rewrites):
    m, x, ctx = blocks
    ref = _out(m, x, ctx).numpy()
    with rewritten(m, rewrites):
        data = export_bytes(m, SPEC, (x, ctx))
    graph = onnx.load_from_string(data)
    ops = {n.op_type for n in graph.graph.node}
    assert ("MultiHeadAttention" in ops) == ("fused_attention" in rewrites)
    ff_splits = [n.name for n in graph.graph.node if n.op_type in ("Split", "Slice") and "/ff/" in n.name]
    assert bool(ff_splits) == ("split_geglu" not in rewrites), ff_splits
    conv_ranks = {len(i.dims) for i in graph.graph.initializer
                  if any(n.op_type == "Conv" and n.input[1] == i.name for n in graph.graph.node)}
    assert (5 in conv_ranks) == ("temporal_conv2d" not in rewrites)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy(), "context": ctx.numpy()})[0]
    err = float(np.abs(got - ref).max())
    print(f"{'+'.join(rewrites)}: ORT vs torch max abs {err:.1e}")
    assert float(np.abs(ref).max()) > 0.1
    assert err <= 1e-4


def test_single_key_attention_skips_the_attention_and_stays_exact(blocks):
    """A one-token context (SVD's image embedding): the cross-attention is its value, broadcast."""
    m, x, _ = blocks
    one = torch.randn(4, 1, 32, generator=torch.Generator().manual_seed(3))
    spec = GraphSpec("blocks1", (TensorSpec("x", SHAPES[0], "float32"), TensorSpec("context", (4, 1, 32), "float32")),
                     SPEC.outputs)
    ref = _out(m, x, one)
    graphs = {}
    for rw in [(), ("single_key_attention",), REWRITES]:
        with rewritten(m, rw):
            eager = _out(m, x, one)
            graphs[rw] = onnx.load_from_string(export_bytes(m, spec, (x, one)))
        err = float((eager - ref).abs().max())
        sess = ort.InferenceSession(graphs[rw].SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x.numpy(), "context": one.numpy()})[0]
        err_ort = float(np.abs(got - ref.numpy()).max())
        print(f"{'+'.join(rw) or 'none'}: torch max abs {err:.1e}, ORT {err_ort:.1e}")
        assert err <= 1e-5 and err_ort <= 1e-4
    cross_q = lambda g: [n.name for n in g.graph.node if "/attn2/to_q" in n.name]  # noqa: E731
    assert cross_q(graphs[()]) and not cross_q(graphs[("single_key_attention",)]) and not cross_q(graphs[REWRITES])
    # the self-attention (64 tokens) keeps its query projection
    assert [n.name for n in graphs[REWRITES].graph.node if "/attn1/to_q" in n.name]


def test_attention_mask_goes_to_the_replaced_processor(blocks):
    m, _, _ = blocks
    attn = m.spatial.transformer_blocks[0].attn2
    g = torch.Generator().manual_seed(1)
    h, c = torch.randn(2, 5, 64, generator=g), torch.randn(2, 7, 32, generator=g)
    mask = torch.ones(2, 7)
    mask[:, 4:] = 0
    bias = (1 - mask) * -10000.0
    ref = _out(attn, h, c, bias[:, None, :])
    with rewritten(m, ["fused_attention", "single_key_attention"]):
        assert type(attn.processor).__name__ == "ExportAttentionProcessor"
        got = _out(attn, h, c, bias[:, None, :])
    assert torch.equal(got, ref)


def test_rewrites_are_part_of_the_cache_key(blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("EZVTB_HOME", str(tmp_path))
    m, x, ctx = blocks
    keys = {rw: export_key(m, SPEC, rewrites=rw) for rw in [(), ("split_geglu",), REWRITES]}
    assert len(set(keys.values())) == 3
    assert export_key(m, SPEC, rewrites=("temporal_conv2d", "split_geglu")) == \
        export_key(m, SPEC, rewrites=("split_geglu", "temporal_conv2d"))
    plain = export_module(m, SPEC, name="blocks", progress=False)
    fused = export_module(m, SPEC, name="blocks", progress=False, rewrites=REWRITES)
    assert plain != fused and plain.parent.name == keys[()] and fused.parent.name == keys[REWRITES]
    assert b"MultiHeadAttention" not in plain.read_bytes() and b"MultiHeadAttention" in fused.read_bytes()


def test_runner_exports_what_its_backend_gets(tmp_path, monkeypatch):
    monkeypatch.setenv("EZVTB_HOME", str(tmp_path))
    lin = torch.nn.Linear(4, 4)
    spec = GraphSpec("lin", (TensorSpec("x", (2, 4), "float32"),), (TensorSpec("y", (2, 4), "float32"),))
    run = GraphRunner(lin, lambda s: spec, name="lin", backend="cpu", progress=False)
    x = torch.randn(2, 4)
    assert torch.allclose(run(x), _out(lin, x), atol=1e-6)
    assert run.rewrites == REWRITES
    # nothing in a Linear to rewrite: the same graph under the same key as without rewrites
    assert run.paths[((2, 4),)].parent.name == export_key(lin, spec, rewrites=REWRITES) == export_key(lin, spec)
    run.close()
    assert GraphRunner(lin, lambda s: spec, name="lin", backend="cpu", rewrites=()).rewrites == ()


def test_networks_without_diffusers_export_where_diffusers_is_not_installed(tmp_path):
    """Audio2Coeff or a CLIP tower on the cpu backend: the rewrites are looked for without importing diffusers."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['diffusers'] = None\n"  # any import of diffusers fails, as when not installed
        "import torch\n"
        "from ezvtb.engines.base import GraphSpec, TensorSpec\n"
        "from ezvtb.engines.runner import GraphRunner\n"
        "spec = GraphSpec('lin', (TensorSpec('x', (2, 4), 'float32'),), (TensorSpec('y', (2, 4), 'float32'),))\n"
        "lin = torch.nn.Linear(4, 4)\n"
        "run = GraphRunner(lin, lambda s: spec, name='lin', backend='cpu', progress=False)\n"
        "x = torch.randn(2, 4)\n"
        "err = float((run(x) - lin(x)).abs().max())\n"
        "assert err < 1e-6, err\n"
        "print('ok', run.rewrites)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "EZVTB_HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("ok")


def test_rewrites_apply_to_the_unet3d_and_the_video_unet():
    """Every attention, temporal conv and GEGLU of both UNet families is replaced (eager outputs equal)."""
    from sgm_video_fixtures import tiny_unet

    net = UNet3DStep(unet3d(32, seed=3)).eval()
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(1, 4, 2, 8, 8, generator=g), torch.full((1,), 500.0), torch.randn(1, 7, 32, generator=g)
    ref = _out(net, x, t, c)
    with rewritten(net, REWRITES) as counts:
        got = _out(net, x, t, c)
    print("UNet3D", counts, f"max abs {float((got - ref).abs().max()):.1e}")
    assert all(n > 0 for n in counts.values()) and float((got - ref).abs().max()) <= 1e-5
    _, video = tiny_unet(256)
    with rewritten(video, REWRITES) as counts:
        pass
    print("VideoUNet", counts)
    assert counts["frame_shared_context"] == 0  # its context is per frame, not repeated by the network
    assert counts["fused_attention"] > 0 and counts["temporal_conv2d"] > 0 and counts["split_geglu"] > 0


@pytest.fixture(scope="module")
def cfg_unet3d():
    """A tiny UNet3D on a CFG batch of 2 videos of 3 frames, two different contexts."""
    net = UNet3DStep(unet3d(32, levels=2, seed=4)).eval()
    g = torch.Generator().manual_seed(1)
    xs = (torch.randn(2, 4, 3, 8, 8, generator=g), torch.full((2,), 700.0), torch.randn(2, 7, 32, generator=g))
    return net, xs


def test_frame_shared_context_projects_the_context_once_per_video(cfg_unet3d):
    """Exact in torch, on ONNX Runtime with and without the fused attention; the key projection of every
    cross-attention sees one context per video (batch 2), not one per frame (6); the hook is removed after."""
    from ezvtb.diffusion.unet3d import unet3d_step_spec

    net, xs = cfg_unet3d
    ref = _out(net, *xs)
    crosses = [m for m in net.modules() if getattr(m, "is_cross_attention", False)]
    with rewritten(net, ["frame_shared_context"]) as counts:
        got = _out(net, *xs)
    err = float((got - ref).abs().max())
    print(f"frame_shared_context: {counts}, torch max abs {err:.1e}")
    assert counts["frame_shared_context"] == len(crosses) > 0
    assert err <= 1e-5
    assert not net.unet._forward_pre_hooks and torch.equal(_out(net, *xs), ref)
    spec = unet3d_step_spec(tuple(tuple(x.shape) for x in xs))
    feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, xs)}
    for rewrites in (("frame_shared_context",), ("frame_shared_context", "fused_attention"), ()):
        with rewritten(net, rewrites):
            data = export_bytes(net, spec, xs)
        graph = onnx.load_from_string(data)  # the spatial cross-attentions' key projections as extra outputs
        keys = [n.output[0] for n in graph.graph.node
                if n.op_type == "MatMul" and "/attentions." in n.name and "attn2/to_k" in n.name]
        graph.graph.output.extend(onnx.ValueInfoProto(name=k) for k in keys)
        got, *projected = ort.InferenceSession(graph.SerializeToString(),
                                               providers=["CPUExecutionProvider"]).run(None, feeds)
        key_batches = {k.shape[0] for k in projected}
        err = float(np.abs(got - ref.numpy()).max())
        print(f"{'+'.join(rewrites) or 'none'}: key projection batches {key_batches}, ORT vs torch max abs {err:.1e}")
        assert key_batches == ({2} if rewrites else {6})
        assert err <= 1e-4
