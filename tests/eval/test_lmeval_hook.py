"""The start-up hook that lets a bare `lm_eval --model fewshot` find our backend."""

import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

from fewshot.eval.lmeval import hook as lmeval_hook  # noqa: E402


def run_python(code: str) -> str:
    """A fresh interpreter, so the .pth file and a clean sys.modules are what is tested."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_the_installed_pth_registers_fewshot_beside_lm_evals_own_models() -> None:
    out = run_python(
        "import sys\n"
        "import lm_eval.models\n"
        "from lm_eval.api.registry import get_model, model_registry\n"
        "assert 'fewshot' in model_registry and 'fewshot.eval.lmeval.backend' not in sys.modules\n"  # a lazy placeholder
        "cls = get_model('fewshot')\n"
        "print(cls.__module__, cls.__name__, 'hf' in model_registry, 'vllm' in model_registry)\n"
    )
    assert out == "fewshot.eval.lmeval.backend FewshotLM True True"  # lm-eval's own table is still there


def test_interpreters_that_never_import_lm_eval_import_nothing_heavy() -> None:
    out = run_python("import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lm_eval', 'numpy')))")
    assert out == "[]"


def test_importing_the_backend_first_then_the_table_does_not_collide() -> None:
    out = run_python(
        "import fewshot.eval.lmeval.backend\n"
        "import lm_eval.models\n"
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('fewshot').__name__)\n"
    )
    assert out == "FewshotLM"


def test_install_is_idempotent() -> None:
    before = sum(isinstance(f, lmeval_hook._Finder) for f in sys.meta_path)
    lmeval_hook.install()
    lmeval_hook.install()
    assert sum(isinstance(f, lmeval_hook._Finder) for f in sys.meta_path) == max(before, 1)
