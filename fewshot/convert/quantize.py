"""`fewshot quantize RUN --to q8_0|q4_0|q4_1 --out OUT`: a run whose block matrices stay
block-quantised in memory and on disk (fewshot.model.quant), for faster CPU decoding.

The new run is an inference run, like an import: it keeps the source's tokenizer and
records where it came from; training and fine-tuning go on from the source.
"""

from __future__ import annotations

from pathlib import Path

from fewshot.config import QUANT_FORMATS
from fewshot.errors import FewshotError
from fewshot.files import check_new_dir
from fewshot.inference.lm import load
from fewshot.model.quant import quantize_layers
from fewshot.runs import RunDir


def quantize_run(run: str | Path, out: str | Path, fmt: str) -> Path:
    """Write `out`, `run` with its block matrices in `fmt` and its head in q8_0."""
    if fmt not in QUANT_FORMATS:
        raise FewshotError(f"--to must be one of {', '.join(QUANT_FORMATS)}, got {fmt!r}")
    check_new_dir(Path(out))
    if RunDir.open(run).is_adapter:
        raise FewshotError(f"{run} is an adapter; merge it into its base (`fewshot finetune --merge`) and quantise that")
    lm = load(run)
    config = lm.config
    if config.model.quant is not None:
        raise FewshotError(f"{run} is already quantised ({config.model.quant}); quantise the run it came from")
    quantize_layers(lm.model, fmt)
    model_config = config.model.replace(quant=fmt)
    source = {"quantized_from": str(Path(run).resolve()), "format": fmt, "origin": config.source}
    weights = {name: tensor.contiguous() for name, tensor in lm.model.state_dict().items()}
    return RunDir.publish(out, config.replace(model=model_config, train=None, data=None, source=source),
                          lm.tokenizer, weights).path
