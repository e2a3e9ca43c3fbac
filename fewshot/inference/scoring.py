"""Continuation log-probabilities: the one scoring function behind `lm.score`, multiple-choice
evaluation and the lm-eval backend.

Context and continuation are tokenised separately and joined (GPT-3's multiple-choice
scoring), then left-truncated to the model's context, so the continuation's own tokens are
what is scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.inference_mode()
def score_continuations(model, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 32) -> list[tuple[float, bool]]:
    """(summed log P(continuation | context), whether greedy decoding gives it) per token-level
    (context, continuation) pair.

    Longest first, in right-padded batches of `batch_size`: causal attention never lets a real
    position see the padding after it. A continuation longer than the context is scored on its
    last `context` tokens; an empty one scores 0 and is trivially greedy.
    """
    context = model.config.context
    device = next(model.parameters()).device
    rows = []
    for context_ids, continuation_ids in pairs:
        if not continuation_ids:
            rows.append(None)
            continue
        ids = (list(context_ids) + list(continuation_ids))[-(context + 1):]
        scored = min(len(continuation_ids), len(ids) - 1)
        rows.append((ids[:-1], ids[-scored:]))  # (model input, scored targets)
    results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
    order = sorted((i for i, row in enumerate(rows) if row), key=lambda i: -len(rows[i][0]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = len(rows[chunk[0]][0])
        idx = torch.tensor([rows[i][0] + [0] * (width - len(rows[i][0])) for i in chunk], device=device)
        logits, _ = model(idx)
        log_probs = logits.float().log_softmax(dim=-1)
        for row, i in enumerate(chunk):
            inputs, targets = rows[i]
            positions = torch.arange(len(inputs) - len(targets), len(inputs), device=device)
            scores = log_probs[row, positions]
            wanted = torch.tensor(targets, device=device)
            greedy = bool((scores.argmax(dim=-1) == wanted).all())
            results[i] = (scores[torch.arange(len(targets)), wanted].sum().item(), greedy)
    return results
