"""The house plan, checked: imports only run downward, no import cycles (between modules or between packages),
no branch on the model family outside the task registry, and one program builder shared by the training loop
and the benchmarks.

Levels (docs/ARCHITECTURE.md): a module may import modules of its own level or below, never above.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lax_pretrain"

# (module prefix, level); the longest matching prefix decides. Entry points (CLIs) sit on top.
LEVELS = [
    ("lax_pretrain.nnx_compat", 0),
    ("lax_pretrain.cli", 0),
    ("lax_pretrain.registry", 0),
    ("lax_pretrain.machine", 0),
    ("lax_pretrain.extensions", 0),
    ("lax_pretrain.timing", 0),
    # the leaf sharding package: mesh, rules, constraints, TP hooks, collectives
    ("lax_pretrain.parallel", 1),
    ("lax_pretrain.layers", 2),
    ("lax_pretrain.models", 3),
    ("lax_pretrain.data", 3),
    ("lax_pretrain.optim", 3),
    ("lax_pretrain.config", 4),
    ("lax_pretrain.recipe", 4),
    ("lax_pretrain.adapters", 5),
    ("lax_pretrain.train", 6),
    ("lax_pretrain.targets", 6),  # target descriptions and the target compile (lax-plan --target)
    ("lax_pretrain.bench", 7),
    ("lax_pretrain.experiments", 7),
    ("lax_pretrain.convert", 7),  # an import is a training workdir: it writes checkpoints (train level 6)
    ("lax_pretrain.params", 8),
    ("lax_pretrain.plan", 8),
    ("lax_pretrain.sample", 8),
    ("lax_pretrain.quickstart", 8),
    ("lax_pretrain.prepare", 8),
    ("lax_pretrain.finetune", 8),
    ("lax_pretrain.train.__main__", 8),
    ("lax_pretrain.bench.cli", 8),
    ("lax_pretrain.convert.__main__", 8),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = ROOT / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:` (annotations only: no import at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports at any place (function-local imports included)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, targets = module_name(path), set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lax_pretrain"):
                for alias in node.names:  # `from pkg import submodule` depends on the submodule only
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if is_module(sub) else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("lax_pretrain")}
        graph[name] = targets - {name}
    return graph


def level(name: str) -> int:
    if name == "lax_pretrain":  # the package's __init__: a docstring and the version
        return 0
    matches = [
        (len(prefix), lvl) for prefix, lvl in LEVELS if name == prefix or name.startswith(prefix + ".")
    ]
    assert matches, f"{name} has no level in LEVELS: add it (and to docs/ARCHITECTURE.md)"
    return max(matches)[1]


def test_imports_only_run_downward():
    upward = [
        f"{a} (level {level(a)}) imports {b} (level {level(b)})"
        for a, targets in import_graph().items()
        for b in targets
        if level(b) > level(a)
    ]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as its nodes, the first repeated at the end; None where there is none."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_of(module: str) -> str:
    """The top-level package (or module) of a module: lax_pretrain.bench.report -> lax_pretrain.bench."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """package -> the other packages its modules import (lax_pretrain.bench -> lax_pretrain.experiments)."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        edges = packages.setdefault(package_of(module), set())
        edges |= {package_of(t) for t in targets} - {package_of(module)}
    return packages


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycles_between_packages():
    """Modules may form no cycle, yet their packages may (bench.report -> experiments.report while
    experiments.reproduce -> bench.timing): two packages that lean on each other are one package in two
    folders."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_the_cycle_checks_can_fail():
    graph = {
        "lax_pretrain.a.x": {"lax_pretrain.b.y"},
        "lax_pretrain.b.y": set(),
        "lax_pretrain.b.z": {"lax_pretrain.a.w"},
    }
    assert find_cycle(graph) is None
    assert find_cycle(package_graph(graph)) == ["lax_pretrain.a", "lax_pretrain.b", "lax_pretrain.a"]


FAMILY_BRANCH = re.compile(r"""family\s*[!=]=|[!=]=\s*["'](llama|vit)["']|["'](llama|vit)["']\s*[!=]=""")


def test_no_family_branch_outside_the_registry():
    registry = PACKAGE / "models" / "tasks.py"
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "scripts").glob("*.py")])
        if p != registry
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if FAMILY_BRANCH.search(line)
    ]
    assert not hits, "ask lax_pretrain.models.get_task(...) instead:\n" + "\n".join(hits)


@pytest.mark.slow
def test_benchmark_times_the_program_training_runs(tmp_path, monkeypatch):
    """The step the models/memory benchmarks compile is the loop's: same lowered program text."""
    import lax_pretrain.train.loop as loop
    from lax_pretrain.bench.models import model_config, shrink_model, step_program
    from lax_pretrain.data.config import default_data_config
    from lax_pretrain.train import train

    config = model_config("llama", "nano", "cola", "kron")
    shrink_model(config, d_model=32, num_layers=2, num_heads=2, ffn_dim=64, rank=8)
    config.data = default_data_config("shakespeare")
    config.data.update(seq_len=16, eval_batches=1)  # the session's TFDS data dir
    config.train.update(steps=1, batch_size=4, log_every=1, eval_every=1, checkpoint_every=1)
    config.mesh.update(data=1, fsdp=1, tensor=1, num_devices=1)
    config.wandb.mode = "disabled"
    built = {}

    def recording(*args, **kwargs):
        built["program"] = real(*args, **kwargs)
        return built["program"]

    real = loop.build_program
    monkeypatch.setattr(loop, "build_program", recording)
    train(copy.deepcopy(config), tmp_path / "run")
    loop_text = built["program"].lower_train_step().as_text()
    bench_text = step_program(config, 4, 16).lower_train_step().as_text()
    assert loop_text == bench_text
