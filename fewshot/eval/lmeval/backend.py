"""fewshot models as an lm-evaluation-harness backend: `FewshotLM`, registered as "fewshot".

    lm_eval --model fewshot --model_args path=runs/mine \\
        --tasks my_task --include_path tasks/ --num_fewshot 0

lm-eval 0.4.13 resolves `--model` from its built-in table only (no entry-point group for
plugins); the `fewshot_lmeval.pth` that installing fewshot puts in site-packages adds
"fewshot" to that table (see `fewshot.eval.lmeval.hook`). Where that file is absent (say, the
source tree is only on PYTHONPATH), `python -m fewshot.eval.lmeval.backend` takes exactly the arguments of
`lm_eval`: it registers the model, then hands over to lm-eval's own CLI. From Python,
`import fewshot.eval.lmeval.backend` before `lm_eval.simple_evaluate` registers it just the same.

Scoring is `LM.score`'s and `fewshot eval`'s: fewshot.inference.scoring.score_continuations.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
from lm_eval.api.model import LM as HarnessLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

import fewshot
from fewshot.inference.sampling import MAX_STOP_SEQUENCES
from fewshot.inference.scoring import score_continuations

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until


@register_model("fewshot")
class FewshotLM(HarnessLM):
    """lm-eval's `LM` over `fewshot.load(path)`: `--model_args path=RUN`, device from `--device`."""

    def __init__(self, path: str, device: str | None = None, batch_size: int | str | None = None,
                 max_batch_size: int | None = None, **_: Any) -> None:
        super().__init__()
        self.lm = fewshot.load(path, device=harness_device(device))
        # lm-eval passes "auto" or "auto:N" to backends that can probe memory; we use a fixed size.
        self.batch_size = int(batch_size) if str(batch_size or "").isdigit() else DEFAULT_BATCH_SIZE
        if max_batch_size:
            self.batch_size = min(self.batch_size, int(max_batch_size))
        self._device = self.lm.device

    @property
    def context(self) -> int:
        return self.lm.model.config.context

    # ------------------------------------------------------------------ log-likelihood

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(summed log P(continuation | context), whether greedy decoding gives it) per request."""
        tokenizer = self.lm.tokenizer
        pairs = []
        for request in requests:
            context, continuation = request.args
            context_ids = tokenizer.encode(context) or [tokenizer.eot_id]  # an empty context is conditioned on EOT
            pairs.append((context_ids, tokenizer.encode(continuation)))
        results = self._score_tokens(pairs)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text after EOT, in windows of the model's context;
        every token is scored once, each with as much context as fits (lm-eval's scheme)."""
        tokenizer = self.lm.tokenizer
        results = []
        for request in requests:
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                tokenizer.encode(text), prefix_token=tokenizer.eot_id, max_seq_len=self.context, context_len=1)]
            total = sum(logprob for logprob, _ in self._score_tokens(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            results.append(total)
        return results

    def _score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        return score_continuations(self.lm.model, pairs, self.batch_size)

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut at the first of `until`."""
        results = []
        for request in requests:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else [s for s in until if s]
            max_tokens = int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            # fewshot follows the OpenAI limit on stop sequences; the rest are applied below.
            text = self.lm.generate(context, max_tokens=max_tokens, temperature=0, stop=until[:MAX_STOP_SEQUENCES])
            for stop in until:
                text = text.split(stop, 1)[0]
            self.cache_hook.add_partial("generate_until", request.args, text)
            results.append(text)
        return results


def harness_device(device: str | None) -> str:
    """lm-eval's CLI asks for "cuda:0" unless told otherwise; like its HF backend, fall back
    to the CPU where there is no GPU rather than fail a run the user never pointed at one."""
    if device is None:
        return "auto"
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("lm-eval asked for device %s but no CUDA GPU is available; using the CPU", device)
        return "cpu"
    return device


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's CLI with the "fewshot" model registered (this module's import did that)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
