"""The layering of docs/architecture.md, read from the code's own imports (module top and function bodies alike):
no module imports a higher layer, and the import graph has no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom; a module belongs to the first (longest) prefix that names it. Keep in step with
# docs/architecture.md.
LAYERS = {
    "ezvtb.cli": 6, "ezvtb.studio": 6, "ezvtb.ipc": 6, "ezvtb.cluster": 6, "ezvtb.__main__": 6,
    "ezvtb.factory": 5, "ezvtb.options": 5,
    "ezvtb.core": 4, "ezvtb.pipeline": 4, "ezvtb.stages": 4, "ezvtb.live": 4, "ezvtb.diffusion": 4,
    "ezvtb.sd_video": 4, "ezvtb.novel_view": 4, "ezvtb.audio2coeff": 4,
    "ezvtb.export": 3, "ezvtb.engines.runner": 3,
    "ezvtb.models": 2,
    "ezvtb.engines": 1, "ezvtb.cache": 1, "ezvtb.weights": 1, "ezvtb.models.*.spec": 1,
    "ezvtb.paths": 0, "ezvtb.atomic": 0, "ezvtb.image": 0, "ezvtb.pose": 0, "ezvtb.lru": 0, "ezvtb.traces": 0,
    "ezvtb.video": 0, "ezvtb.demo_script": 0, "ezvtb.stages.timing": 0, "ezvtb.outputs": 0, "ezvtb.extras": 0,
}
NAMES = {0: "leaf modules", 1: "engines, cache, weights, graph specs", 2: "models", 3: "export",
         4: "core, stages, live I/O, generative pipelines", 5: "core assembly", 6: "CLI, web app, IPC, cluster"}
# Known cycles being removed by other work in flight (each pair sorted); empty when none.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def modules() -> dict[str, Path]:
    out = {}
    for p in (ROOT / "ezvtb").rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 4 and parts[1] == "models" and parts[3] == "spec":
        return LAYERS["ezvtb.models.*.spec"]
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module}: not in any layer of LAYERS (docs/architecture.md)")


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the ezvtb modules it imports (the package facade `ezvtb` itself left out)."""
    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = {}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {resolve(a.name) for a in node.names if a.name.startswith("ezvtb")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    keep = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(keep + ([base] if base else []))
                if base.startswith("ezvtb"):
                    out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else resolve(base) for a in node.names}
        edges[m] = out - {m, "ezvtb", ""}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(tuple(sorted(comp)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for m in modules():
        if m != "ezvtb":
            layer(m)


def test_no_module_imports_a_higher_layer():
    mods = modules()
    bad = [f"{m} ({NAMES[layer(m)]}) imports {t} ({NAMES[layer(t)]})"
           for m, targets in imports(mods).items() if m != "ezvtb" for t in sorted(targets) if layer(t) > layer(m)]
    assert bad == [], "\n".join(bad)


def test_the_import_graph_has_no_cycle():
    found = set(cycles(imports(modules())))
    assert found <= KNOWN_CYCLES, sorted(found - KNOWN_CYCLES)


def test_the_checker_sees_a_violation_and_a_cycle():
    edges = {"ezvtb.stages.rife": {"ezvtb.factory"}, "ezvtb.factory": {"ezvtb.stages.rife"}}
    assert cycles(edges) == [("ezvtb.factory", "ezvtb.stages.rife")]
    assert layer("ezvtb.stages.rife") < layer("ezvtb.factory")
    assert layer("ezvtb.models.rife.spec") < layer("ezvtb.models.rife.loader")
