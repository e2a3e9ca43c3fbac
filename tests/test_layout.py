"""The layout is the pipeline: each stage imports only the stages below it.

Imports are read from the source (module level and inside functions alike), so a deferred
import cannot hide an upward edge.
"""

import ast
from pathlib import Path

import fewshot

# Bottom to top. A module may import its own stage and any stage listed before it.
STAGES = [
    ("errors", "files", "figures", "progress"),
    ("config", "tokenizer", "chat", "template_worker"),
    ("runs", "device"),
    ("model",),
    ("data",),
    ("tasks",),
    ("train",),
    ("inference",),
    ("eval",),
    ("serve", "convert"),
    ("bench",),
    ("experiments",),
    ("cli", "__main__"),
]
LEVEL = {name: level for level, names in enumerate(STAGES) for name in names}
PACKAGE = Path(fewshot.__file__).parent


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "fewshot" and len(parts) > 1 else None


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    """stage -> the stages its modules import."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.name != "__init__.py" else None
        if own is None:
            continue  # fewshot/__init__.py: the facade (`fewshot.load`) reaches the inference stage lazily
        targets = {s for s in map(stage, imports(path)) if s and s in LEVEL and s != own}
        graph.setdefault(own, set()).update(targets)
    return graph


def test_every_module_belongs_to_a_stage() -> None:
    assert set(import_graph()) <= set(LEVEL), set(import_graph()) - set(LEVEL)


def test_no_stage_imports_a_stage_above_it() -> None:
    upward = sorted((own, target) for own, targets in import_graph().items() for target in targets if LEVEL[target] > LEVEL[own])
    assert not upward, f"upward imports: {upward}"


if __name__ == "__main__":  # the graph as text: `python tests/test_layout.py`
    for own, targets in sorted(import_graph().items(), key=lambda item: LEVEL[item[0]]):
        print(f"{own:12} -> {', '.join(sorted(targets, key=LEVEL.get)) or '(nothing in fewshot)'}")
