"""ezvtb.export.exporter.export_module: export any torch module with a GraphSpec, cache it, run it on sessions.

A small real network (conv, GroupNorm, SDPA attention, a sinusoidal timestep embedding from an
int64 input, two outputs) is exported with the TorchScript exporter and run on ONNX Runtime's CPU
provider; every result is compared with the module itself.
"""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from ezvtb.engines import create_session  # noqa: E402
from ezvtb.engines.base import GraphSpec, TensorSpec  # noqa: E402
from ezvtb.engines.runner import GraphRunner  # noqa: E402
from ezvtb.export import exporter, onnx_file  # noqa: E402
from ezvtb.export.exporter import ExportError, export_key, export_module  # noqa: E402
from ezvtb.export.onnx_file import external_data_name  # noqa: E402


class TinyNet(torch.nn.Module):
    """x (B,C,H,W) float, t (B,) int64 -> (y same as x, pooled (B,C))."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.c = c
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.norm = torch.nn.GroupNorm(32, c)
        self.qkv = torch.nn.Linear(c, 3 * c)
        self.temb = torch.nn.Linear(c, c)
        self.out = torch.nn.Conv2d(c, c, 1)

    def forward(self, x, t):
        half = self.c // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        emb = self.temb(torch.cat([torch.cos(args), torch.sin(args)], -1).to(x.dtype))
        h = torch.nn.functional.silu(self.norm(self.conv(x))) + emb[:, :, None, None]
        b, c, hh, ww = h.shape
        seq = h.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(seq).reshape(b, hh * ww, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        a = a.permute(0, 2, 1, 3).reshape(b, hh * ww, c).transpose(1, 2).reshape(b, c, hh, ww)
        y = self.out(a) + x
        return y, y.mean(dim=(2, 3))


def spec_for(shapes):
    (b, c, h, w), (bt,) = shapes
    return GraphSpec(f"tiny_{b}x{h}x{w}",
                     (TensorSpec("x", (b, c, h, w), "float32"), TensorSpec("t", (bt,), "int64")),
                     (TensorSpec("y", (b, c, h, w), "float32"), TensorSpec("pooled", (b, c), "float32")))


SHAPES = ((2, 32, 8, 8), (2,))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One export cache for the whole file (each export takes seconds on a small CPU)."""
    path = tmp_path_factory.mktemp("generic") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EZVTB_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TinyNet().eval()


def inputs(seed=1, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shapes[0], generator=g), torch.randint(0, 1000, shapes[1], generator=g)


def ort_run(path, spec, x, t, **options):
    with create_session(path, spec, "cpu", **options) as s:
        out = s.run({"x": x.numpy(), "t": t.numpy()})
        return {k: v.copy() for k, v in out.items()}


def test_export_matches_torch_on_ort(home, net):
    spec = spec_for(SHAPES)
    path = export_module(net, spec, name="tiny", progress=False)
    assert path.is_file() and path.parent.parent == home / "onnx" / "tiny"
    x, t = inputs()
    with torch.no_grad():
        y, pooled = net(x, t)
    got = ort_run(path, spec, x, t)
    err = max(np.abs(got["y"] - y.numpy()).max(), np.abs(got["pooled"] - pooled.numpy()).max())
    print(f"tiny net ORT vs torch max abs {err:.2e} (|y| max {float(y.abs().max()):.2f})")
    assert err <= 1e-5
    assert float(y.abs().max()) > 0.1  # a real, non-trivial output


def test_second_call_is_a_cache_hit_without_the_exporter(home, net, monkeypatch):
    spec = spec_for(SHAPES)
    first = export_module(net, spec, name="tiny", progress=False)
    mtime = first.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("torch.onnx.export must not run on a cache hit")

    monkeypatch.setattr(torch.onnx, "export", boom)
    second = export_module(net, spec, name="tiny", progress=False)
    assert second == first and second.stat().st_mtime_ns == mtime
    # other weights, precision or spec -> another key (would export: here the exporter raises)
    other = TinyNet().eval()
    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        export_module(other, spec, name="tiny", progress=False)
    assert export_key(other, spec) != export_key(net, spec)
    assert export_key(net, spec, "fp16") != export_key(net, spec)
    assert export_key(net, spec_for(((1, 32, 8, 8), (1,)))) != export_key(net, spec)
    assert not list(first.parent.parent.glob("*/.tiny.*")), "no temporary folder may be left behind"


def test_forced_external_data_opens_from_its_folder(home, net, tmp_path):
    spec = spec_for(SHAPES)
    out = tmp_path / "ext"
    path = export_module(net, spec, name="tiny", external_data=True, out_dir=out, progress=False)
    key = export_key(net, spec)
    data = out / external_data_name("tiny", key)
    assert data.is_file() and data.stat().st_size > 0.9 * sum(p.numel() * 4 for p in net.parameters())
    assert path.stat().st_size < 20_000, "weights must live in the external file, not the .onnx"
    model = onnx.load(str(path), load_external_data=False)
    locs = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locs == {data.name}
    # the folder moves as a whole: the location is relative to the .onnx
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    x, t = inputs(2)
    with torch.no_grad():
        y, _ = net(x, t)
    got = ort_run(moved / path.name, spec, x, t)
    assert np.abs(got["y"] - y.numpy()).max() <= 1e-5
    onnx.checker.check_model(str(moved / path.name))
    # a removed weights file makes the cache entry incomplete -> exported again
    (moved / data.name).unlink()
    assert not onnx_file.is_complete(moved / path.name)


def test_fp16_graph_keeps_spec_dtypes(home, net):
    spec = spec_for(SHAPES)
    path = export_module(net, spec, name="tiny", precision="fp16", progress=False)
    model = onnx.load(str(path))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT,
                                                                         onnx.TensorProto.INT64]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    x, t = inputs(3)
    with torch.no_grad():
        y, _ = net(x, t)
    got = ort_run(path, spec, x, t)
    err = np.abs(got["y"] - y.numpy()).max()
    print(f"fp16 graph vs fp32 torch max abs {err:.2e}")
    assert err <= 3e-2 * float(y.abs().max())
    assert net.conv.weight.dtype == torch.float32, "the caller's module must stay fp32"


def test_errors_name_the_argument(home, net):
    spec = spec_for(SHAPES)
    with pytest.raises(ValueError, match="name"):
        export_module(net, spec, name="../evil", progress=False)
    with pytest.raises(ValueError, match="precision"):
        export_module(net, spec, name="tiny", precision="int8", progress=False)
    with pytest.raises(ValueError, match="opset"):
        export_module(net, spec, name="tiny", opset=9, progress=False)
    with pytest.raises(ValueError, match="spec"):
        export_module(net, "not a spec", name="tiny", progress=False)
    with pytest.raises(ValueError, match="external_data"):
        export_module(net, spec, name="tiny", external_data="yes", progress=False)
    with pytest.raises(ValueError, match="module"):
        export_module(lambda x: x, spec, name="tiny", progress=False)
    bad_shape = GraphSpec("bad", spec.inputs, (TensorSpec("y", (2, 32, 4, 4), "float32"), spec.outputs[1]))
    with pytest.raises(ValueError, match=r"output 'y'.*\[2, 32, 8, 8\].*\[2, 32, 4, 4\]"):
        export_module(net, bad_shape, name="tiny", progress=False)
    one_out = GraphSpec("one", spec.inputs, spec.outputs[:1])
    with pytest.raises(ValueError, match="returned 2 outputs.*declares 1"):
        export_module(net, one_out, name="tiny", progress=False)
    with pytest.raises(ValueError, match="example_inputs"):
        export_module(net, spec, name="tiny", example_inputs=(torch.zeros(1),), progress=False)
    assert net.training is False
    net.train()
    with pytest.raises(ValueError):
        export_module(net, one_out, name="tiny", progress=False)
    assert net.training is True, "export restores the module's training flag"
    net.eval()
    with pytest.raises(ValueError, match="backend"):
        GraphRunner(net, spec_for, name="tiny", backend="gpu")
    runner = GraphRunner(net, lambda shapes: spec, name="tiny", backend="cpu", progress=False)
    with pytest.raises(ValueError, match="spec_for"):
        runner(*inputs(1, ((1, 32, 8, 8), (1,))))
    assert not list(home.glob("onnx/tiny/*/.tiny.*")), "failed exports leave no temporary folder"


def test_graph_runner_per_shape_sessions_and_torch_backend(home, net):
    runner = GraphRunner(net, spec_for, name="tiny", backend="cpu", progress=False, intra_op_threads=1)
    try:
        for shapes in (SHAPES, ((1, 32, 16, 8), (1,)), SHAPES):
            x, t = inputs(4, shapes)
            with torch.no_grad():
                ref = net(x, t)
            got = runner(x, t)
            assert isinstance(got, tuple) and len(got) == 2
            for r, g in zip(ref, got):
                assert isinstance(g, torch.Tensor) and g.shape == r.shape
                assert float((g - r).abs().max()) <= 1e-5
        assert len(runner._sessions) == 2
        a = runner(*inputs(5))[0]
        kept = a.clone()
        runner(*inputs(6))
        assert torch.equal(a, kept), "outputs are fresh tensors, not views of session buffers"
    finally:
        runner.close()
    assert not runner._sessions
    eager = GraphRunner(net, spec_for, name="tiny", backend="torch")
    x, t = inputs(7)
    x.requires_grad_(True)
    y, _ = eager(x, t)
    y.sum().backward()  # the torch backend is the module itself: gradients flow
    assert x.grad is not None


def _toy_onnx(folder, symbolic: bool):
    """y = x @ W + b (W 600x600: 1.4 MB, b: 16 bytes) with the output's batch dim symbolic or static."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((600, 600)).astype(np.float32)
    b = rng.standard_normal((4,)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 600])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N" if symbolic else 2, 600])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Slice", ["b", "zero", "one"], ["b0"]),
             helper.make_node("Add", ["xw", "b0"], ["y"])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    model = helper.make_model(helper.make_graph(nodes, "toy", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True)
    raw = folder / "graph.onnx"
    onnx.save(model, str(raw))
    return raw, w, b


TOY_SPEC = GraphSpec("toy", (TensorSpec("x", (2, 600), "float32"),), (TensorSpec("y", (2, 600), "float32"),))


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("symbolic", [False, True])
def test_finalise_rewrites_the_wire_format_exactly(tmp_path, external, symbolic):
    raw, w, b = _toy_onnx(tmp_path / "raw", symbolic)
    out = tmp_path / "out" / "toy.onnx"
    out.parent.mkdir()
    onnx_file.finalise(raw, out, TOY_SPEC, "k123", "toy", external)
    model = onnx.load(str(out))  # loads external data relative to the .onnx
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 600]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(inits["W"], w) and np.array_equal(inits["b"], b)
    bare = onnx.load(str(out), load_external_data=False)
    ext = {t.name: {e.key: e.value for e in t.external_data} for t in bare.graph.initializer if t.external_data}
    if external:
        assert set(ext) == {"W"}, "tensors under 1 KiB stay inline"
        assert ext["W"]["location"] == "toy.k123.weights" and int(ext["W"]["offset"]) % 4096 == 0
        assert (out.parent / "toy.external").read_text().strip() == "toy.k123.weights"
    else:
        assert not ext and not (out.parent / "toy.external").exists()
        assert raw.exists() == symbolic, "a graph whose outputs already match is moved, not rewritten"
    x = np.random.default_rng(1).standard_normal((2, 600)).astype(np.float32)
    with create_session(out, TOY_SPEC, "cpu") as s:
        got = s.run({"x": x})["y"]
    assert np.abs(got - (x @ w + b[0])).max() <= 1e-3


def test_weights_never_enter_the_exporters_proto(home, monkeypatch):
    """The exporter sees an empty initializer map (its ModelProto holds no weights); the graph is
    written from the captured tensors, not from the exporter's file."""
    def old_path(*a, **k):
        raise AssertionError("the captured-initializer path must be used")

    monkeypatch.setattr(exporter, "finalise", old_path)
    torch.manual_seed(5)
    net = TinyNet().eval()
    spec = spec_for(SHAPES)
    for external in (False, True):
        path = export_module(net, spec, name="tiny_capture", external_data=external,
                             out_dir=home / f"capture_{external}", progress=False)
        model = onnx.load(str(path))
        assert [i.name for i in model.graph.input] == ["x", "t"]
        names = {t.name for t in model.graph.initializer}
        assert len(names) >= 8
        x, t = inputs(8)
        with torch.no_grad():
            y, _ = net(x, t)
        assert np.abs(ort_run(path, spec, x, t)["y"] - y.numpy()).max() <= 1e-5


def test_a_recipe_is_verified_before_it_is_cached_and_old_versions_are_never_read(home, net, monkeypatch):
    """`export_graph` publishes a graph only after the recipe's check passed; a failing check leaves no file and
    no scratch folder. The key covers `EXPORTER_VERSION`: a graph cached under another version is not found."""
    spec = spec_for(SHAPES)
    calls = []

    def check(path, module):
        calls.append(path)
        x, t = inputs(3)
        with torch.no_grad():
            y, _ = module(x, t)
        err = float(np.abs(ort_run(path, spec, x, t)["y"] - y.numpy()).max())
        if err > 1e-5:
            raise ExportError(f"max abs error {err:.2e}")
        return f"max abs error {err:.1e}"

    recipe = exporter.Recipe("recipes", "tiny_recipe", spec, "tiny|seed0", lambda: net, verify=check)
    path = exporter.export_graph(recipe, progress=False)
    assert path.is_file() and len(calls) == 1 and calls[0] != path  # checked before it was moved into place
    assert exporter.export_graph(recipe, progress=False) == path and len(calls) == 1  # a hit: not exported again
    bad = exporter.Recipe("recipes", "tiny_bad", spec, "tiny|bad", lambda: net,
                          verify=lambda p, m: (_ for _ in ()).throw(ExportError("simulated mismatch")))
    with pytest.raises(ExportError, match="simulated mismatch"):
        exporter.export_graph(bad, progress=False)
    folder = home / "onnx" / "recipes"
    assert not [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.startswith("tiny_bad")]
    monkeypatch.setattr(exporter, "EXPORTER_VERSION", "ezvtb-export-older")
    assert exporter.graph_path(recipe) != path and not exporter.graph_path(recipe).exists()
