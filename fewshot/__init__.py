"""fewshot: a GPT-3-style few-shot language-model system.

    import fewshot
    lm = fewshot.load("runs/mine")
    lm.generate("Once upon", max_tokens=50, temperature=0.8)
"""

__version__ = "0.1.0"

from fewshot.errors import FewshotError  # noqa: E402


def load(run_dir, device: str = "cpu", adapter=None, dtype: str = "fp32"):
    """Model and tokenizer from a run directory, optionally with a fine-tuned adapter (see `fewshot.inference.lm.load`)."""
    from fewshot.inference.lm import load as load_lm  # deferred: `import fewshot` stays light for the CLI

    return load_lm(run_dir, device=device, adapter=adapter, dtype=dtype)


__all__ = ["FewshotError", "load", "__version__"]
