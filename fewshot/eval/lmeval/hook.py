"""Makes `lm_eval --model fewshot` find `FewshotLM` without importing anything heavy.

lm-eval 0.4.13 looks models up in its own table (`lm_eval.models.MODEL_MAPPING`) and has no
plugin entry-point group. The installed `fewshot_lmeval.pth` runs `install()` at interpreter
start; it only adds a finder that waits for `lm_eval.models` to be imported, and right after
that module has filled the registry, adds "fewshot" as a lazy "module:Class" placeholder the
way lm-eval registers its own backends. Nothing of fewshot or torch is imported until lm-eval
asks for the model. Interpreters that never import lm-eval pay one list insertion.
"""

from __future__ import annotations

import importlib.machinery
import sys
from types import ModuleType

MODEL_NAME = "fewshot"
MODEL_TARGET = "fewshot.eval.lmeval.backend:FewshotLM"
WATCHED_MODULE = "lm_eval.models"


def register(registry) -> None:
    """Add the placeholder unless "fewshot" is already there (say, `fewshot.eval.lmeval.backend` was imported)."""
    if MODEL_NAME not in registry:
        registry.register(MODEL_NAME, target=MODEL_TARGET)


class _RegisterAfterExec:
    """Runs the real loader, then registers. (Plain classes: importing importlib.abc here would
    cost every interpreter start a few milliseconds.)"""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        from lm_eval.api.registry import model_registry

        register(model_registry)


class _Finder:
    def find_spec(self, name: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        if name != WATCHED_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install() -> None:
    """Idempotent: the .pth file and tests may both call it."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
