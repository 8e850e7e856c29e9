"""The layers of DESIGN.md, checked on the source: imports point down only, no import cycles, no torch where
none belongs. Every import counts, also one inside a function (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import shutil
from functools import lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "personae"

# low to high; a module may import its own layer and the ones below it
LAYERS = ["base", "config", "data", "models", "evaluation", "inference", "methods", "training", "jobs", "demo", "cli"]
PACKAGE_LAYER = {"config": "config", "data": "data", "media": "data", "models": "models",
                 "evaluation": "evaluation", "inference": "inference", "methods": "methods",
                 "training": "training", "jobs": "jobs", "demo": "demo", "cli": "cli", "web": "cli"}
TOP_LEVEL = {"errors": "base", "events": "base", "staging": "base", "hub": "base", "outputs": "base", "runs": "base", "quiet": "base",
             "__init__": "base", "__main__": "cli"}
WORLD = {"__init__": "base", "vocab": "config", "pretrain_settings": "config", "bench_settings": "config",
         "bench_recipes": "config", "render_settings": "config", "controlnet_settings": "config", "placed": "data",
         "scene": "data", "render": "data", "tokenizer": "models", "model": "models", "check": "evaluation",
         "bench_scores": "evaluation", "evaluate": "evaluation", "shots": "evaluation", "style": "evaluation",
         "control_eval": "inference", "img2img_eval": "inference", "motion_settings": "config", "clips": "evaluation", "motion_eval": "inference", "travel_eval": "inference", "clip_control_eval": "inference",
         "motion_train": "training", "motion_lora": "training", "motion_words": "training",
         "pretrain": "training", "controlnet_train": "training", "zero_snr_settings": "config",
         "zero_snr": "training", "bench": "jobs"}
NO_TORCH = ("config", "data", "media")  # packages (and world modules at the config / data layers)
TORCH = ("torch", "diffusers", "transformers", "peft", "accelerate", "onnxruntime")


def layer_of(module: str) -> str:
    """`personae.x.y` -> its layer name (a KeyError for a module nobody placed: place it in the map)."""
    parts = module.split(".")[1:]
    if len(parts) == 1:
        return TOP_LEVEL[parts[0]]
    if parts[0] == "world":
        return WORLD[parts[1]]
    return PACKAGE_LAYER[parts[0]]


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        out[".".join(rel.parts)] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    """Every module `module` imports (absolute names; packages resolved to their __init__ names as written)."""
    return _imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")


@lru_cache(maxsize=None)  # the planted-violation tests read a copy of the same files
def _imports(text: str, module: str, is_package: bool) -> frozenset[str]:
    found = set()
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return frozenset(found)


def violations(root: Path = SRC) -> list[str]:
    """What breaks the layers under `root` (the personae package folder), one line each."""
    mods = modules(root)
    out, graph = [], {}
    for module, path in mods.items():
        try:
            mine = LAYERS.index(layer_of(module))
        except KeyError:
            out.append(f"{module}: not placed in a layer (add it to tests/test_architecture.py)")
            continue
        deps = {d for d in imports(path, module) if d in mods and d != module}
        graph[module] = deps
        for dep in sorted(deps):
            theirs = LAYERS.index(layer_of(dep))
            if theirs > mine:
                out.append(f"{module} ({LAYERS[mine]}) imports {dep} ({LAYERS[theirs]}): an upward import")
        top = module.split(".")[1]
        light = top in NO_TORCH or (top == "world" and layer_of(module) in ("config", "data"))
        heavy = sorted(d for d in imports(path, module) if d.split(".")[0] in TORCH)
        if light and heavy:
            out.append(f"{module} imports {', '.join(heavy)}: no torch in config/, data/, media/")
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), each as a path that closes on itself."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path(graph, g) for g in groups]


def _path(graph, group):
    start, seen, path = group[0], set(), [group[0]]
    node = start
    while True:
        nxt = sorted(d for d in graph[node] if d in group)
        step = next((d for d in nxt if d == start), None) or next((d for d in nxt if d not in seen), nxt[0])
        path.append(step)
        if step == start or step in seen:
            return path
        seen.add(step)
        node = step


def test_the_layers_hold():
    assert violations() == []


@pytest.mark.parametrize("planted,expected", [
    ("config/zz_bad.py", ("from personae.jobs.train import run_training\n", "upward import")),
    ("media/zz_bad.py", ("import torch\n", "no torch in")),
    ("world/scene_helpers.py", ("", "not placed in a layer")),
    ("evaluation/zz_a.py", ("from personae.evaluation import zz_b\n", "import cycle")),
    ("models/zz_lazy.py", ("def f():\n    from personae.cli.main import main\n", "upward import")),
])
def test_a_planted_violation_is_found(tmp_path, planted, expected):
    root = tmp_path / "personae"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("weights", "sd15", "__pycache__"))
    text, words = expected
    (root / planted).write_text(text, encoding="utf-8")
    if "zz_a" in planted:
        (root / "evaluation/zz_b.py").write_text("import personae.evaluation.zz_a\n", encoding="utf-8")
    found = violations(root)
    assert any(words in line for line in found), found
    assert all(planted.split("/")[1].removesuffix(".py") in line for line in found), found  # nothing else
