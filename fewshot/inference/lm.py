"""`fewshot.load(run_dir)`: a trained model and its tokenizer behind four calls.

    lm = fewshot.load("runs/mine")
    lm.tokenizer.encode("The cat")          # list[int]
    lm.logits(ids)                          # (len(ids), vocab) float32
    lm.generate("The cat", max_tokens=20)   # str
    lm.score("Q: 2+2?\\nA:", " 4")          # summed log-probability of the continuation
    lm.chat([{"role": "user", "content": "Hi"}], max_tokens=50)   # the assistant's reply
    tuned = lm.with_adapter("runs/ft")      # a LoRA/(IA)3 run on top, sharing lm's weights
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot.chat import ChatPrompt, Message, render_chat
from fewshot.errors import FewshotError
from fewshot.inference.decode import Completion, generate
from fewshot.inference.sampling import SamplingOptions
from fewshot.model import GPT
from fewshot.inference.scoring import score_continuations
from fewshot.runs import RunConfig, RunDir
from fewshot.tokenizer import Tokenizer
from fewshot.device import dtype_named, pick_device


@dataclass
class LM:
    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    source: str = "the model"  # what error messages call it: the run directory, once loaded
    run: RunDir | None = None  # where the weights came from, for adapters to check their base against
    adapter: str | None = None  # the adapter run on top of them

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Next-token logits at every position: (len(ids), vocab), float32."""
        if not ids:
            raise FewshotError("logits: need at least one token")
        idx = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        logits, _ = self.model(idx)
        return logits[0].float()

    def with_adapter(self, adapter: str | Path) -> LM:
        """This model with a LoRA/(IA)3 run on top, sharing (not copying) the base's weights.

        Refused when the adapter was trained on another base (its fingerprint must match)."""
        from fewshot.train.finetune import apply_adapter

        if self.run is None or self.adapter is not None:
            raise FewshotError(f"{adapter}: an adapter goes onto a plain run loaded with fewshot.load, not onto {self.source}")
        if self.config.model.quant is not None:
            raise FewshotError(f"{adapter}: adapters go onto float runs, and {self.source} is quantised ({self.config.model.quant})")
        model = apply_adapter(GPT.sharing(self.model), adapter, self.run)
        return LM(model.eval(), self.tokenizer, self.config, f"{self.run.path} + {adapter}", self.run, str(adapter))

    def complete(self, prompt: str | Sequence[int], on_text: Callable[[int, str], None] | None = None, **options: Any) -> list[Completion]:
        """Every sample with its finish reason and (optionally) logprobs."""
        return generate(self.model, self.tokenizer, prompt, SamplingOptions(**options), on_text=on_text)

    def generate(self, prompt: str, **options: Any) -> str:
        """The text of the first sample; options are those of SamplingOptions."""
        return self.complete(prompt, **options)[0].text

    def chat_prompt(self, messages: Sequence[Message | dict[str, str]]) -> ChatPrompt:
        """Messages rendered with the model's chat template (fewshot/chat.py)."""
        parsed = []
        for message in messages:
            if isinstance(message, dict):
                if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                    raise FewshotError(f"chat: each message needs a string role and content, got {message!r}")
                message = Message(message["role"], message["content"])
            parsed.append(message)
        return render_chat(parsed, self.tokenizer.chat_template, self.source)

    def chat(self, messages: Sequence[Message | dict[str, str]], on_text: Callable[[int, str], None] | None = None,
             **options: Any) -> list[Completion]:
        """The assistant's next turn; options are those of SamplingOptions."""
        prompt = self.chat_prompt(messages)
        stop = options.get("stop", ())
        options["stop"] = ((stop,) if isinstance(stop, str) else tuple(stop)) + prompt.stop
        return self.complete(prompt.text, on_text=on_text, **options)

    def score(self, context: str, continuation: str) -> float:
        """Summed log-probability of `continuation` given `context`.

        The two are tokenised separately and joined, as in GPT-3's multiple-choice scoring,
        so the continuation's tokens are exactly what is scored.
        """
        context_ids = self.tokenizer.encode(context) or [self.tokenizer.eot_id]
        continuation_ids = self.tokenizer.encode(continuation)
        if not continuation_ids:
            raise FewshotError("score: the continuation is empty")
        if len(continuation_ids) >= self.model.config.context + 1:
            raise FewshotError(f"score: the continuation alone exceeds the context of {self.model.config.context} tokens")
        [(logprob, _)] = score_continuations(self.model, [(context_ids, continuation_ids)], batch_size=1)
        return logprob


def load(run_dir: str | Path, device: str = "cpu", adapter: str | Path | None = None, dtype: str = "fp32") -> LM:
    """Model and tokenizer from a run directory, in eval mode; `adapter`: a LoRA/(IA)3 run on top.

    An adapter run given as `run_dir` loads onto the base it records. `dtype` ("fp32" or
    "bf16") is what the model computes in, whatever the file holds: bf16 halves the bytes a
    decoding step reads and doubles the matmul rate where the hardware has bf16 (AVX512-BF16,
    AMX, recent GPUs); elsewhere it is emulated and slower than fp32.
    """
    compute = dtype_named(dtype, "load")
    run = RunDir.open(run_dir)
    if run.is_adapter:
        if adapter is not None:
            raise FewshotError(f"{run_dir} is itself an adapter; give its base as the run and it as the adapter")
        adapter, run = run_dir, RunDir.open((run.config.source or {}).get("base", ""))
    model_config, tokenizer = run.config.model, run.tokenizer()
    if tokenizer.vocab_size > model_config.vocab_size:
        raise FewshotError(
            f"{run.path}: tokenizer has {tokenizer.vocab_size} ids but the model only {model_config.vocab_size}; "
            "the tokenizer does not belong to this model"
        )
    if model_config.quant and compute != torch.float32:
        raise FewshotError(f"{run.path} keeps its weights as {model_config.quant} blocks, which compute in fp32; drop --dtype {dtype}")
    model = GPT.for_loading(model_config, pick_device(device), compute)
    run.load_weights(model)
    lm = LM(model.eval(), tokenizer, run.config, str(run.path), run)
    return lm if adapter is None else lm.with_adapter(adapter)
