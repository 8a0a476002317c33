"""The package's layers, held by an ``ast`` walk of every import in unet/ (function-level ones included):
no import cycle; the network knows no storage and no cluster; storage knows no network and no cluster;
inference runs without Ray; the driver side and the actor side of the job share only the job's vocabulary
(unet/job/spec.py and what both need: plan, pyramid, storage) and never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unet"

DRIVER_SIDE = {"unet.job.driver", "unet.job.rounds", "unet.job.progress", "unet.job.scheduler",
               "unet.job.objects.driver", "unet.job.objects.merge", "unet.job.objects.tables", "unet.job.cog",
               "unet.job.startup"}
ACTOR_SIDE = {"unet.job.actor", "unet.job.skip", "unet.job.objects.actor", "unet.job.objects.label",
              "unet.job.objects.grow"}
SHARED = {"unet.job", "unet.job.objects", "unet.job.spec", "unet.job.plan", "unet.job.pyramid", "unet.job.roi",
          "unet.job.options", "unet.job.prepare", "unet.job.report", "unet.job.objects.summary", "unet.job.level",
          "unet.job.geometry", "unet.job.limits", "unet.job.manifest"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(module: str) -> set[str]:
    """Every module ``module`` imports: unet modules by their full name, others by their top-level name."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "unet":
                found.add(name.split(".")[0])
            elif name in MODULES:
                found.add(name)
    found.discard(module)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def closure(module: str) -> set[str]:
    """Everything ``module`` loads, directly or through other unet modules."""
    seen, todo = set(), [module]
    while todo:
        for name in GRAPH.get(todo.pop(), ()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def in_folder(folder: str) -> list[str]:
    return sorted(m for m in MODULES if m == folder or m.startswith(folder + "."))


def test_the_walk_sees_the_package():
    assert {"unet.nn.model", "unet.infer.predict", "unet.job.spec", "unet.job.driver", "unet.job.actor",
            "unet.io.output", "unet.api"} <= set(MODULES)
    assert "unet.job.spec" in GRAPH["unet.job.driver"] and "torch" in GRAPH["unet.nn.model"]
    assert DRIVER_SIDE | ACTOR_SIDE <= set(MODULES)


def test_no_import_cycles():
    unet_graph = {m: {n for n in targets if n in MODULES and not MODULES[n].name == "__init__.py"}
                  for m, targets in GRAPH.items()}
    cycles = [m for m in unet_graph if m in {n for start in unet_graph[m] for n in _reach(unet_graph, start)}]
    assert not cycles, f"modules on an import cycle: {cycles}"


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for name in graph[todo.pop()]:
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


@pytest.mark.parametrize("folder, forbidden", [
    ("unet.nn", {"ray", "unet.io", "unet.job", "unet.infer", "unet.train", "unet.demo", "unet.api", "zarr"}),
    ("unet.io", {"torch", "ray", "unet.nn", "unet.infer", "unet.train", "unet.job", "unet.demo", "unet.api"}),
    ("unet.infer", {"ray", "unet.job", "unet.train", "unet.demo", "unet.api"}),
    ("unet.train", {"ray", "unet.job", "unet.demo", "unet.api"}),
])
def test_layers_import_only_what_they_may(folder, forbidden):
    for module in in_folder(folder):
        loaded = closure(module)
        bad = sorted(n for n in loaded if any(n == f or n.startswith(f + ".") for f in forbidden))
        assert not bad, f"{module} loads {bad}"


@pytest.mark.parametrize("side, other", [(DRIVER_SIDE, ACTOR_SIDE), (ACTOR_SIDE, DRIVER_SIDE)])
def test_driver_and_actor_sides_never_import_each_other(side, other):
    for module in sorted(side):
        crossing = sorted(closure(module) & other)
        assert not crossing, f"{module} loads {crossing} of the other side"


def test_driver_and_actor_speak_through_the_spec():
    assert "unet.job.spec" in GRAPH["unet.job.driver"] | closure("unet.job.rounds")
    assert "unet.job.spec" in GRAPH["unet.job.actor"]


def test_every_job_module_has_a_side():
    """A new module under unet/job/ says which side it is on (or that both use it), so the tests above hold it."""
    unclassified = sorted(set(in_folder("unet.job")) - DRIVER_SIDE - ACTOR_SIDE - SHARED)
    assert not unclassified, f"add {unclassified} to DRIVER_SIDE, ACTOR_SIDE or SHARED in tests/test_layering.py"
    assert not (SHARED & (DRIVER_SIDE | ACTOR_SIDE)) and not DRIVER_SIDE & ACTOR_SIDE
    for module in sorted(SHARED):
        crossing = sorted(closure(module) & (DRIVER_SIDE | ACTOR_SIDE))
        assert not crossing, f"{module}, shared by both sides, loads {crossing}"
