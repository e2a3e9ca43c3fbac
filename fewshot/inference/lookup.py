"""Draft tokens for prompt-lookup decoding (Saxena 2023; HF's `prompt_lookup_num_tokens`,
vLLM's n-gram speculator): the tokens that followed the latest earlier occurrence of the
sequence's last n tokens.

Few-shot prompts repeat themselves: an answer copies words of its question, a list task
copies the list, the format lines come back every example. A draft costs no model call; the
model checks all of it in one forward pass, and decoding keeps the tokens it would have
produced anyway (fewshot.inference.decode).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_NGRAM = 3  # the longest tail looked up; longer tails match more precisely but less often
MAX_DRAFT = 64  # the most draft tokens a request may ask for


class NgramDrafts:
    """One sequence's tokens, with every n-gram (n <= MAX_NGRAM) indexed by where it last
    ended, so a lookup costs O(MAX_NGRAM) whatever the length, not a scan of the prompt."""

    def __init__(self, tokens: Iterable[int] = (), max_ngram: int = MAX_NGRAM) -> None:
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        # n-gram -> the index just past its latest occurrence that already has a continuation
        self.latest: dict[tuple[int, ...], int] = {}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        # The n-grams ending at the current last token get their continuation now; the new
        # tail itself is indexed only when a token follows it, so a lookup finds an earlier one.
        end = len(self.tokens)
        for n in range(1, min(self.max_ngram, end) + 1):
            self.latest[tuple(self.tokens[end - n:end])] = end
        self.tokens.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the longest tail (MAX_NGRAM tokens down to one) seen before."""
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, len(self.tokens)), 0, -1):
            start = self.latest.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start:start + k]
        return []
