"""Block-quantised weights: the formats against ggml's own bytes, the kernel against the
dequantised matmul (with the bound its int8 activations allow), and quantised models."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot.config import PRESETS
from fewshot.errors import FewshotError
from fewshot.model import GPT
from fewshot.model import kernels
from fewshot.model.kernels import qmatmul
from fewshot.model.quant import BLOCK, FORMATS, KERNEL_MAX_ROWS, QuantLinear, dequantize, quantize, quantize_layers

GGML = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}
needs_kernel = pytest.mark.skipif(qmatmul() is None, reason="the quantised-matmul kernel cannot run on this machine")


def weights(rows: int, blocks: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, blocks * BLOCK, generator=generator) * torch.rand(rows, 1, generator=generator)


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(FORMATS), rows=st.integers(1, 9), blocks=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_dequantised_values_are_within_each_formats_step(fmt, rows, blocks, seed):
    w = weights(rows, blocks, seed)
    parts = quantize(w, fmt)
    error = (dequantize(parts, fmt) - w).abs().reshape(rows, blocks, BLOCK)
    step = parts["scales"].float().abs()[..., None]
    # Half a step of rounding, plus float16's rounding of the scale (and minimum) itself. Q4_0
    # maps the extreme to -8, so the other end can clamp at +7: a whole step there.
    slack = (0.5 if fmt != "q4_0" else 1.0) * step + 2e-3 * w.abs().reshape(rows, blocks, BLOCK).amax(-1, keepdim=True)
    assert (error <= slack).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_block_layout_is_ggmls(fmt):
    """ggml's bytes for a matrix, split into scales / minimums / values, dequantise as gguf's own reader does."""
    w = weights(6, 3, 0).numpy()
    raw = gguf.quants.quantize(w, GGML[fmt]).reshape(6, 3, -1)
    expected = gguf.quants.dequantize(raw.reshape(6, -1), GGML[fmt]).reshape(6, -1)
    scales = torch.from_numpy(raw[..., :2].copy().view(np.float16).reshape(6, 3))
    if fmt == "q8_0":
        parts = {"qweight": torch.from_numpy(raw[..., 2:].copy().view(np.int8).reshape(6, -1)), "scales": scales}
    elif fmt == "q4_0":
        parts = {"qweight": torch.from_numpy(raw[..., 2:].copy().reshape(6, -1)), "scales": scales}
    else:
        mins = torch.from_numpy(raw[..., 2:4].copy().view(np.float16).reshape(6, 3))
        parts = {"qweight": torch.from_numpy(raw[..., 4:].copy().reshape(6, -1)), "scales": scales, "mins": mins}
    np.testing.assert_array_equal(dequantize(parts, fmt).numpy(), expected)
    ours = quantize(torch.from_numpy(w), fmt)  # and our quantiser rounds as ggml's reference one
    assert (dequantize(ours, fmt).numpy() != expected).mean() < 0.01


@needs_kernel
@settings(max_examples=80, deadline=None)
@given(fmt=st.sampled_from(FORMATS), m=st.integers(1, KERNEL_MAX_ROWS), n=st.integers(1, 40), blocks=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_the_kernel_is_the_dequantised_matmul_up_to_its_int8_activations(fmt, m, n, blocks, seed):
    layer = QuantLinear.from_linear(torch.nn.Linear(blocks * BLOCK, n, bias=False), fmt)
    with torch.no_grad():
        for name, value in quantize(weights(n, blocks, seed), fmt).items():
            getattr(layer, name).copy_(value)
    x = weights(m, blocks, seed + 1) * 3
    w = layer.dequantized()
    y = layer(x)
    # The kernel rounds x to int8 per 32-value block: each value moves by at most half its
    # block's step (max|x| / 127 / 2), so output j moves by at most that times sum |w_j| per block.
    step = x.reshape(m, blocks, BLOCK).abs().amax(-1) / 127 / 2  # (m, blocks)
    bound = step @ w.abs().reshape(n, blocks, BLOCK).sum(-1).t()  # (m, n)
    assert ((y - x @ w.t()).abs() <= bound * 1.001 + 1e-4).all()


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(FORMATS), m=st.integers(2, KERNEL_MAX_ROWS), blocks=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_a_rows_product_does_not_depend_on_the_batch_it_came_in(fmt, m, blocks, seed):
    """Bit for bit: the server batches requests that `generate` runs alone, and greedy text must agree."""
    layer = QuantLinear.from_linear(torch.nn.Linear(blocks * BLOCK, 24, bias=False), fmt)
    with torch.no_grad():
        for name, value in quantize(weights(24, blocks, seed), fmt).items():
            getattr(layer, name).copy_(value)
    x = weights(m, blocks, seed + 1)
    together = layer(x)
    for i in range(m):
        assert torch.equal(layer(x[i:i + 1]), together[i:i + 1])


@pytest.mark.skipif(kernels.isa() != "avx512vnni", reason="this CPU lacks AVX512-VNNI")
@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(FORMATS), m=st.integers(1, KERNEL_MAX_ROWS), n=st.integers(1, 40), blocks=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_the_vnni_and_avx2_products_are_bitwise_equal(fmt, m, n, blocks, seed):
    """Every byte a block can hold, Q8_0's -128 included, against x at its int8 extremes: VNNI's
    dpbusd must give the integers AVX2's maddubs + madd give, or decoding would change with the CPU."""
    layer = QuantLinear.from_linear(torch.nn.Linear(blocks * BLOCK, n, bias=False), fmt)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.qweight.copy_(torch.randint(0, 256, layer.qweight.shape, generator=generator, dtype=torch.uint8).view(layer.qweight.dtype))
    x = torch.randint(-1, 2, (m, blocks * BLOCK), generator=generator).float() * (1 + torch.rand(m, 1, generator=generator))
    with kernels.on_isa("avx2"):
        expected = layer(x)
    with kernels.on_isa("avx512vnni"):
        assert torch.equal(layer(x), expected)
    assert kernels.isa() == "avx512vnni"


def test_many_rows_and_other_dtypes_take_the_dequantised_path_exactly():
    layer = QuantLinear.from_linear(torch.nn.Linear(64, 8), "q4_1")
    x = torch.randn(KERNEL_MAX_ROWS + 1, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantized().t() + layer.bias, rtol=0, atol=1e-5)


def test_bad_shapes_and_formats_are_refused():
    with pytest.raises(FewshotError, match="whole blocks"):
        quantize(torch.randn(4, 40), "q8_0")
    with pytest.raises(FewshotError, match="unknown quantisation"):
        quantize(torch.randn(4, 64), "q3_k")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_quantised_model_loads_and_decodes_close_to_the_float_one(fmt, tmp_path):
    torch.manual_seed(0)
    model = GPT(PRESETS["llama-nano"].model.replace(d_model=128, d_ff=256, context=64)).eval()
    ids = torch.randint(0, 200, (2, 24))
    reference, _ = model(ids)
    quantize_layers(model, fmt)
    assert {type(m).__name__ for m in model.blocks.modules()} >= {"QuantLinear"} and isinstance(model.head, QuantLinear)
    logits, _ = model(ids)
    assert ((logits - reference).norm() / reference.norm()).item() < {"q8_0": 0.02, "q4_0": 0.2, "q4_1": 0.2}[fmt]
    # The state dict round-trips through a meta-built model of the quantised config.
    loaded = GPT.for_loading(model.config.replace(quant=fmt))
    loaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(loaded(ids)[0], logits)
    cache = loaded.new_cache(2, capacity=32)  # decoding: few rows, the kernel's path
    step_logits = loaded.step(ids[:, :8], cache)
    step_logits = torch.cat([step_logits, *(loaded.step(ids[:, t:t + 1], cache) for t in range(8, 12))], dim=1)
    torch.testing.assert_close(step_logits, logits[:, :12], atol=0.05 * logits.abs().max().item(), rtol=0)


@needs_kernel
@pytest.mark.slow  # compiling takes ~30 s
def test_compiled_decoding_keeps_the_kernel_as_one_op_and_the_same_tokens():
    from fewshot.inference.decode import generate
    from fewshot.inference.sampling import SamplingOptions
    from fewshot.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    model = GPT(PRESETS["llama-nano"].model.replace(d_model=128, d_ff=256, context=128)).eval()
    quantize_layers(model, "q4_1")
    options = SamplingOptions(max_tokens=40, temperature=0)
    eager = generate(model, ByteTokenizer(), "hello world", options)[0].token_ids
    model.compile_decoding(True)
    assert generate(model, ByteTokenizer(), "hello world", options)[0].token_ids == eager
