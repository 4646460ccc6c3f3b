"""The contract every generative pipeline (`ezvtb.diffusion.networks.NetworkSet`) keeps, as a test mixin.

A pipeline's test module subclasses `PipelineContract` with a tiny random model in the real checkpoint layout:

    class TestSDVideoContract(PipelineContract):
        tolerance = 1e-3                      # max |torch - graph| of `run`'s output
        @pytest.fixture(scope="class")
        def pipelines(self, ...):             # (eager pipeline, exported-graph pipeline) of the same weights
            ...
        def run(self, pipe, seed): ...        # one small, seeded call -> a float tensor
        def bad_calls(self, pipe): ...        # [(argument name the error must name, zero-argument call), ...]

and inherits: torch vs graph within `tolerance`, seeded determinism, the progress callback, close() and the
context manager releasing every session (the pipeline stays usable), and bad inputs failing with a ValueError
that names the argument and leaves the pipeline usable.
"""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch


class PipelineContract:
    tolerance: float = 1e-3

    def run(self, pipe, seed: int) -> torch.Tensor:  # pragma: no cover - each pipeline defines it
        raise NotImplementedError

    def bad_calls(self, pipe) -> list:  # pragma: no cover - each pipeline defines it
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def outputs(self, pipelines):
        eager, graph = pipelines
        assert eager.backend == "torch" and graph.backend != "torch"
        return {"eager": self.run(eager, 1), "graph": self.run(graph, 1)}

    def test_torch_and_graph_agree(self, outputs):
        a, b = outputs["eager"], outputs["graph"]
        err = (a - b).abs().max().item()
        print(f"{type(self).__name__}: graph vs torch max |diff| {err:.2e} (bound {self.tolerance:.0e}, "
              f"output std {a.std().item():.3f})")
        assert a.shape == b.shape and a.std() > 1e-3 and err <= self.tolerance

    def test_progress_callback_and_seeded_determinism(self, pipelines, outputs):
        eager, _ = pipelines
        seen = defaultdict(list)
        eager.progress_callback = lambda stage, done, total: seen[stage].append((done, total))
        try:
            again = self.run(eager, 1)
        finally:
            eager.progress_callback = None
        assert torch.equal(again, outputs["eager"]), "the same seed gives the same output"
        assert seen, "progress_callback was never called"
        for stage, calls in seen.items():
            done = [d for d, _ in calls]
            assert done == sorted(done) and done[0] >= 1 and done[-1] == calls[-1][1], (stage, calls)
        assert (self.run(eager, 2) - outputs["eager"]).abs().max() > 1e-3, "another seed gives another output"

    def test_close_releases_sessions(self, pipelines, outputs):
        _, graph = pipelines
        if graph.lifetime == "stage":
            assert graph.open_sessions == 0, "per-stage sessions close when their stage ends"
        else:
            assert graph.open_sessions > 0, "persistent sessions stay open between calls"
        graph.close()
        assert graph.open_sessions == 0
        during = []
        graph.progress_callback = lambda stage, done, total: during.append(graph.open_sessions)
        try:
            with graph as g:
                out = self.run(g, 1)
        finally:
            graph.progress_callback = None
        assert during and max(during) > 0, "sessions are open while the pipeline runs"
        assert graph.open_sessions == 0, "leaving the with-block closes every session"
        assert torch.equal(out, outputs["graph"]), "a closed pipeline reopens its sessions and gives the same output"

    def test_bad_inputs_name_the_argument_and_leave_the_pipeline_usable(self, pipelines, outputs):
        eager, _ = pipelines
        calls = self.bad_calls(eager)
        assert calls
        for argument, call in calls:
            with pytest.raises(ValueError, match=argument):
                call()
        assert torch.equal(self.run(eager, 1), outputs["eager"])

    def test_load_names_a_missing_source(self, pipelines, tmp_path):
        eager, _ = pipelines
        with pytest.raises(ValueError, match=f"path: no {eager.source_kind}"):
            type(eager).load(tmp_path / "missing", backend="torch")
