"""Configs as frozen dataclasses, presets as data.

One `ModelConfig` describes every model the project builds; a preset is just a named
instance. The GPT-3 rows follow Table 2.1 of Brown et al. (2020), "Language Models are
Few-Shot Learners".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from fewshot.errors import FewshotError

# A layer's sequence mixer (model/mixers.py):
# - "dense", "local": softmax attention, full or banded (GPT-3 §2.1);
# - "lstm": a recurrent network where attention would be: the same-size recurrent baseline of
#   transformer-vs-RNN in-context learning ablations (Chan et al. 2022, "Data Distributional
#   Properties Drive Emergent In-Context Learning");
# - "linear": causal linear attention (Katharopoulos et al. 2020), an RNN with an O(1) state;
# - "rfa", "rfa-gate": Random Feature Attention (Peng et al. 2021), random Fourier features,
#   without or with its gate;
# - "aft", "aft-local": the Attention-Free Transformer (Zhai et al. 2021): AFT-simple, elementwise,
#   and AFT-local, which adds a learned bias per head and distance within `window`;
# - "gau": FLASH's gated attention unit (Hua et al. 2022), quadratic attention within chunks of
#   `window` positions and linear attention across them;
# - "xl": Transformer-XL (Dai et al. 2019), segments of `window` positions that attend to the
#   previous one as memory, with relative positions;
# - "sru": the Simple Recurrent Unit (Lei et al. 2018), elementwise gates over one matmul;
# - "ssm": a diagonal state-space layer, S4D (Gu et al. 2022), a long convolution or an RNN.
QUANT_FORMATS = ("q8_0", "q4_0", "q4_1")  # ggml's block formats that model/quant.py keeps quantised
MIXERS = ("dense", "local", "lstm", "linear", "rfa", "rfa-gate", "aft", "aft-local", "gau", "xl", "sru", "ssm")
# Mixers that take their positions from learned embeddings and have one key and value per
# query head (the last three know order by themselves, but stay in GPT-3's blocks too).
NO_ROTARY = ("linear", "rfa", "rfa-gate", "aft", "aft-local", "gau", "xl", "sru", "ssm")
SSM_STATE = 32  # S4D's state per channel: 16 complex conjugate pairs
# `attention` names one mixer for every layer, or a comma-separated cycle of them ("linear,dense":
# even layers linear, odd ones dense). "alternating" is GPT-3's "dense,local".
ALTERNATING = "dense,local"
# A block family is a config choice, never a copy of the model:
# - "gpt3": LayerNorm, learned positions, GELU MLP (GPT-2/GPT-3);
# - "llama": RMSNorm, rotary positions (RoPE), SwiGLU MLP, no biases (Llama, SmolLM2).
Block = Literal["gpt3", "llama"]
Precision = Literal["auto", "fp32", "bf16"]
# What weights are written in (imports) or a loaded model computes in (fewshot.load, --dtype).
Dtype = Literal["fp32", "bf16"]
DTYPE_HELP = ("What the model computes in: fp32, or bf16 (half the bytes a decoding step reads and twice the matmul rate "
              "where the hardware has bf16: AVX512-BF16, AMX, GPUs; emulated, and slower than fp32, elsewhere).")
Optimizer = Literal["adamw", "muon"]  # fewshot.train.optim
# Fine-tuning (fewshot.train.finetune): every weight, or a peft adapter on a frozen base.
Method = Literal["full", "lora", "ia3"]
# `--target` names -> the modules they cover, as suffixes of the model's module names.
# Attention's q, k and v are one fused `qkv` layer (as GPT-2's c_attn), so they are one target.
ADAPTER_TARGETS = {"qkv": ("mixer.qkv",), "o": ("mixer.proj",), "mlp": ("mlp.gate", "mlp.up", "mlp.down")}


def check_dtype(name: str, command: str) -> None:
    if name not in get_args(Dtype):
        raise FewshotError(f"{command}: --dtype must be one of {', '.join(get_args(Dtype))}, got {name!r}")


def check_optimizer(name: str) -> None:
    """One check for every entry point that takes --optimizer (TrainConfig, the ICL Recipe)."""
    if name not in get_args(Optimizer):
        raise FewshotError(f"--optimizer must be {' or '.join(get_args(Optimizer))}, got {name!r}")


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int
    n_head: int
    d_model: int
    context: int = 2048
    vocab_size: int = 50257
    # Width of one attention head. None means d_model // n_head. GPT-3's 13B row lists
    # d_model 5140 with 40 heads of 128 (= 5120), so heads can be narrower than d_model.
    head_dim: int | None = None
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = True
    # GPT-3 §2.1: "alternating dense and locally banded sparse attention patterns in the
    # layers of the transformer, similar to the Sparse Transformer".
    attention: str = "dense"
    window: int = 256  # band width of local attention, in tokens (the query included)
    block: Block = "gpt3"
    # Grouped-query attention (Ainslie et al. 2023): key/value heads shared by groups of
    # query heads. None means one per query head (plain multi-head attention).
    n_kv_head: int | None = None
    d_ff: int | None = None  # width of the MLP's hidden layer; None means mlp_ratio * d_model
    rope_base: float = 10000.0  # RoPE's theta (llama blocks); SmolLM2 uses 1e5
    norm_eps: float = 1e-5
    # GPT-2/3 and SmolLM2 reuse the token embedding as the output head; Llama-7B does not.
    tie_embeddings: bool = True
    # Primer's depthwise causal convolution of queries, keys and values over this many
    # positions (So et al. 2021); 0 is off. See model/mixers.py CausalSelfAttention.
    qkv_conv: int = 0
    # Block-quantised matrices kept quantised in memory (model/quant.py; `fewshot quantize`):
    # every block matrix whose rows are whole 32-value blocks in this format, the output head
    # in q8_0 (as llama.cpp's files keep it), the embedding in float. Inference only.
    quant: str | None = None

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "context", "vocab_size", "mlp_ratio", "window"):
            if getattr(self, name) < 1:
                raise FewshotError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim is None and self.d_model % self.n_head:
            raise FewshotError(
                f"model config: d_model {self.d_model} is not divisible by n_head {self.n_head}; "
                "set head_dim explicitly"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise FewshotError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        unknown = [kind for kind in self.layer_pattern() if kind not in MIXERS]
        if unknown or not self.layer_pattern():
            raise FewshotError(f"model config: unknown attention {self.attention!r}: one of {', '.join(MIXERS)}, "
                               "alternating, or a comma-separated cycle of them such as linear,dense")
        other = sorted(set(self.layer_pattern()) & set(NO_ROTARY))
        if other and (self.block != "gpt3" or self.kv_heads != self.n_head or self.qkv_conv):
            raise FewshotError(f"model config: the {' and '.join(other)} mixer takes its positions from learned embeddings, "
                               "has one key and value per query head and no convolution: it needs block gpt3, no "
                               "n_kv_head and no qkv_conv")
        if self.qkv_conv < 0 or self.qkv_conv == 1:
            raise FewshotError(f"model config: qkv_conv is a kernel size >= 2 (or 0 for none), got {self.qkv_conv}")
        if self.block not in ("gpt3", "llama"):
            raise FewshotError(f"model config: unknown block family {self.block!r} (gpt3, llama)")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise FewshotError(f"model config: n_kv_head {self.n_kv_head} must divide n_head {self.n_head}")
        if self.d_ff is not None and self.d_ff < 1:
            raise FewshotError(f"model config: d_ff must be >= 1, got {self.d_ff}")
        if self.quant is not None and self.quant not in QUANT_FORMATS:
            raise FewshotError(f"model config: unknown quantisation {self.quant!r} ({', '.join(QUANT_FORMATS)})")
        if self.block == "llama" and self.head_size % 2:
            raise FewshotError(f"model config: rotary positions need an even head size, got {self.head_size}")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def hidden_size(self) -> int:
        return self.d_ff if self.d_ff is not None else self.mlp_ratio * self.d_model

    @property
    def lstm_size(self) -> int:
        """Hidden width h of an lstm mixer: the h whose mixer costs what attention's does.

        An LSTM from d_model to h holds 4h(d + h) weights and 8h biases (PyTorch keeps two
        sets), and its h -> d_model output projection hd + d. Attention holds about 4d^2, so
        4h^2 + 5hd = 4d^2: h is about 0.55 d_model (53 for nano's 96), and h < d_model
        means the projection is always there. Solved exactly, biases and grouped heads
        included, then rounded: the two mixers differ by under 2% at every preset.
        """
        d, b = self.d_model, 1 if self.bias else 0
        linear = 5 * d + 8 * b  # 4h^2 + linear * h + d * b = attention
        return max(1, round((math.sqrt(linear**2 + 16 * (self._attention_params() - d * b)) - linear) / 8))

    @property
    def ssm_size(self) -> int:
        """Channels of an ssm mixer: in (d -> 2e: u and its gate), e channels of state, out (e -> d),
        e solved so the mixer holds what attention does (Mamba widens likewise, by 2x)."""
        d, b, pairs = self.d_model, 1 if self.bias else 0, SSM_STATE // 2
        return max(1, round((self._attention_params() - d * b) / (3 * d + 2 * b + 2 + 6 * pairs)))

    def layer_pattern(self) -> tuple[str, ...]:
        """The cycle of mixers the layers go through; "alternating" starts dense (Sparse Transformer)."""
        spec = ALTERNATING if self.attention == "alternating" else self.attention
        return tuple(part.strip() for part in spec.split(",") if part.strip())

    def layer_attention(self, layer: int) -> str:
        """The mixer of layer `layer`."""
        pattern = self.layer_pattern()
        return pattern[layer % len(pattern)]

    def _attention_params(self) -> int:
        d, b = self.d_model, 1 if self.bias else 0
        inner, qkv = self.n_head * self.head_size, (self.n_head + 2 * self.kv_heads) * self.head_size
        return d * qkv + qkv * b + inner * d + d * b + qkv * self.qkv_conv

    def mixer_params(self, layer: int = 0) -> int:
        """Parameters of layer `layer`'s sequence mixer (linear attention and AFT have softmax attention's)."""
        kind, d, b = self.layer_attention(layer), self.d_model, 1 if self.bias else 0
        if kind == "lstm":
            h = self.lstm_size
            return 4 * h * (d + h) + 8 * h * b + h * d + d * b
        if kind in ("rfa", "rfa-gate"):  # attention's, sigma per head, and the gate's d -> heads
            return self._attention_params() + self.n_head + (self.n_head * (d + 1) if kind == "rfa-gate" else 0)
        if kind == "aft-local":  # attention's and a bias per head and distance
            return self._attention_params() + self.n_head * self.window
        if kind == "gau":  # U, V and Z from x (e = s = d), their scales and offsets, a bias per distance, out
            return 3 * d * d + 3 * d * b + 8 * d + self.window + d * d + d * b
        if kind == "xl":  # attention's (one key and value per head), W_R, and u and v per head
            inner = self.n_head * self.head_size
            return d * 3 * inner + 3 * inner * b + inner * d + d * b + d * inner + 2 * inner
        if kind == "sru":  # W (3 d x d), the gates' v and b, the output projection
            return 3 * d * d + 4 * d + d * d + d * b
        if kind == "ssm":  # in (u and gate), dt, A, B and C (complex pairs), D, out
            e, pairs = self.ssm_size, SSM_STATE // 2
            return e * (3 * d + 2 * b + 2 + 6 * pairs) + d * b
        return self._attention_params()

    def num_params(self) -> int:
        """Exact parameter count of `GPT(self)` (tied embeddings counted once)."""
        d, hidden, b = self.d_model, self.hidden_size, 1 if self.bias else 0
        if self.block == "llama":
            mlp = 3 * d * hidden + (2 * hidden + d) * b  # gate, up, down
            norm = d  # RMSNorm has a scale and no shift
            positions = 0  # rotary: nothing learned
        else:
            mlp = 2 * d * hidden + (hidden + d) * b
            norm = d * (1 + b)
            positions = self.context * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        mixers = sum(self.mixer_params(layer) for layer in range(self.n_layer))
        return mixers + self.n_layer * (mlp + 2 * norm) + self.vocab_size * d + positions + norm + head

    def matmul_params(self) -> int:
        """N of MFU's 6N: the parameters a matmul multiplies. The learned position table is a
        lookup and an untied input embedding too; the output head counts (bench/train.py)."""
        positions = self.context * self.d_model if self.block == "gpt3" else 0
        untied_embedding = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.num_params() - positions - untied_embedding

    def flops_per_token(self, seq: int) -> int:
        """Training FLOPs per token at sequence length `seq`: 6N + 12·L·d_attn·T (Kaplan et al.
        2020 §2.1; PaLM App. B adds the attention term)."""
        return 6 * self.matmul_params() + 12 * self.n_layer * self.n_head * self.head_size * seq

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FewshotError(f"model config: unknown fields {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Preset:
    """A named size: the model and the peak learning rate it trains at."""

    model: ModelConfig
    lr: float


# Peak learning rates: Table 2.1 for the GPT-3 sizes; 1e-3 for the tiny ones (what small
# character-level models tolerate, as in nanoGPT's shakespeare-char). Vocabulary 260 is the
# byte tokenizer (256 bytes + 4 specials).
_BYTE_VOCAB = 260
# The in-context-learning recipe's blocks (`fewshot icl train`); the presets below say why.
_ICL = ModelConfig(n_layer=4, n_head=4, d_model=128, d_ff=344, context=1024, vocab_size=_BYTE_VOCAB,
                   block="llama", bias=False, qkv_conv=3)
PRESETS: dict[str, Preset] = {
    "nano": Preset(ModelConfig(n_layer=4, n_head=4, d_model=96, context=256, vocab_size=_BYTE_VOCAB), lr=1e-3),  # ~0.5M
    "micro": Preset(ModelConfig(n_layer=6, n_head=4, d_model=160, context=256, vocab_size=_BYTE_VOCAB), lr=1e-3),  # ~2M
    "mini": Preset(ModelConfig(n_layer=6, n_head=6, d_model=384, context=256, vocab_size=_BYTE_VOCAB), lr=1e-3),  # ~10.7M
    # The in-context-learning recipe (`fewshot icl train`): small enough to see ~12M bytes in
    # 30 minutes on a laptop CPU, a context long enough for 16 solved examples, rotary positions
    # and Primer's q/k/v convolution, both of which make copying from the context (induction
    # heads) form sooner (docs/icl/sweep.md has the runs without them).
    "icl": Preset(_ICL, lr=3e-3),  # ~0.83M
    # Six of the same blocks: the 30-minute recipe's model; the 8-minute demo keeps `icl`
    # (docs/icl/sweep.md compares the two).
    "icl-deep": Preset(_ICL.replace(n_layer=6), lr=3e-3),  # ~1.23M
    # Wider, not deeper (issue 34's width arm): Kirsch et al. (2022) find general in-context
    # learning bottlenecked by state size. Four blocks of d_model 192 keep the cost of a step
    # near icl-deep's six of 128, so a time budget buys a comparable number of steps
    # (docs/icl/generalisation.md has both).
    "icl-wide": Preset(_ICL.replace(d_model=192, n_head=6, d_ff=512), lr=3e-3),  # ~1.8M
    # Both: icl-deep's six blocks at icl-wide's width, ~1.6x icl-deep's step; for issue 34's
    # longer-budget arm, where width need not be paid for in depth.
    "icl-deep-wide": Preset(_ICL.replace(n_layer=6, d_model=192, n_head=6, d_ff=512), lr=3e-3),  # ~2.7M
    # The same sizes with Llama blocks: 2 query heads per key/value head, and a SwiGLU
    # hidden layer of 8/3 d_model, so three matrices cost what GELU's two 4 d_model ones do.
    "llama-nano": Preset(ModelConfig(n_layer=4, n_head=4, n_kv_head=2, d_model=96, d_ff=256, context=256,
                                     vocab_size=_BYTE_VOCAB, block="llama", bias=False), lr=1e-3),
    "llama-micro": Preset(ModelConfig(n_layer=6, n_head=4, n_kv_head=2, d_model=160, d_ff=432, context=256,
                                      vocab_size=_BYTE_VOCAB, block="llama", bias=False), lr=1e-3),
    "llama-mini": Preset(ModelConfig(n_layer=6, n_head=6, n_kv_head=3, d_model=384, d_ff=1024, context=256,
                                     vocab_size=_BYTE_VOCAB, block="llama", bias=False), lr=1e-3),
    # SmolLM2-135M (HuggingFaceTB), what `fewshot import-gguf --smollm2` builds; trained from
    # scratch at a GPT-3 Small-sized rate.
    "smollm2-135m": Preset(ModelConfig(n_layer=30, n_head=9, n_kv_head=3, d_model=576, d_ff=1536, context=8192,
                                       vocab_size=49152, block="llama", bias=False, rope_base=1e5), lr=6e-4),  # 134.5M
    # GPT-3 Table 2.1; context 2048, vocabulary 50257 (the GPT-2 BPE).
    "gpt3-small": Preset(ModelConfig(n_layer=12, n_head=12, d_model=768), lr=6e-4),  # 125M
    "gpt3-medium": Preset(ModelConfig(n_layer=24, n_head=16, d_model=1024), lr=3e-4),  # 350M
    "gpt3-large": Preset(ModelConfig(n_layer=24, n_head=16, d_model=1536), lr=2.5e-4),  # 760M
    # The table says 24 heads of 128 for d_model 2048, which is 3072 wide and would make
    # the model 1.52B. Its 1.3B count needs attention 2048 wide, so we keep d_model and
    # d_head = 128 and take 16 heads.
    "gpt3-xl": Preset(ModelConfig(n_layer=24, n_head=16, d_model=2048), lr=2e-4),  # 1.3B
    "gpt3-2.7b": Preset(ModelConfig(n_layer=32, n_head=32, d_model=2560), lr=1.6e-4),  # 2.7B
    "gpt3-6.7b": Preset(ModelConfig(n_layer=32, n_head=32, d_model=4096), lr=1.2e-4),  # 6.7B
    # The table says d_model 5140 with 40 heads of 128 (= 5120). We keep both numbers:
    # the residual stream is 5140 wide and attention projects into 40 x 128 = 5120.
    "gpt3-13b": Preset(ModelConfig(n_layer=40, n_head=40, d_model=5140, head_dim=128), lr=1e-4),  # 13.0B
    "gpt3-175b": Preset(ModelConfig(n_layer=96, n_head=96, d_model=12288), lr=0.6e-4),  # 175B
}


def preset(name: str) -> ModelConfig:
    """The model of preset `name`."""
    return _row(name).model


def _row(name: str) -> Preset:
    if name not in PRESETS:
        raise FewshotError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def setting(default: Any, help: str) -> Any:
    """A config field with its help text: `fewshot.cli.options` turns it into the command's
    option, so the field is the one place a setting is declared."""
    return field(default=default, metadata={"help": help})


# The usual rates: the base's own pre-training rate would wreck it in a full fine-tune,
# while an adapter starts from nothing and needs a large one (T-Few trains (IA)3 at 3e-3).
FINETUNE_LR = {"full": 3e-5, "lora": 1e-3, "ia3": 3e-3}


@dataclass(frozen=True)
class FinetuneConfig:
    """What `fewshot finetune` adds to a training run: the base it starts from, and how."""

    base: str  # the run directory whose weights, model config and tokenizer are the start
    base_sha256: str = ""  # the base weights' fingerprint, recorded when the run starts
    method: Method = setting("lora", "full (every weight), or a peft adapter on the frozen base: lora or ia3.")
    lora_rank: int = setting(8, "LoRA rank r.")
    lora_alpha: float = setting(16.0, "LoRA alpha: the update is scaled by alpha / r.")
    target: str = setting("qkv,o,mlp", "LoRA: the layers that get adapters, from qkv, o, mlp.")
    epochs: float = setting(3.0, "Passes over the training examples; sets the step count unless --max-steps is given.")
    pack: bool = setting(False, "Join examples end to end into full context windows (fewer, fuller batches).")

    def __post_init__(self) -> None:
        if self.method not in get_args(Method):
            raise FewshotError(f"finetune: --method must be one of {', '.join(get_args(Method))}, got {self.method!r}")
        if self.lora_rank < 1 or not self.lora_alpha > 0:
            raise FewshotError(f"finetune: --lora-rank must be >= 1 and --lora-alpha > 0, got {self.lora_rank} and {self.lora_alpha}")
        if not self.epochs > 0 or not math.isfinite(self.epochs):
            raise FewshotError(f"finetune: --epochs must be > 0, got {self.epochs}")
        self.targets()  # fail early on an unknown name

    def targets(self) -> tuple[str, ...]:
        """The module-name suffixes that `target` covers."""
        names = [t.strip() for t in self.target.split(",") if t.strip()]
        unknown = [t for t in names if t not in ADAPTER_TARGETS]
        if unknown or not names:
            raise FewshotError(f"finetune: --target takes {', '.join(ADAPTER_TARGETS)} (comma-separated), got {self.target!r}")
        return tuple(suffix for name in names for suffix in ADAPTER_TARGETS[name])


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    preset: str = setting("mini", "Model size: nano, micro, mini, icl, gpt3-small, ... (fewshot.config.PRESETS).")
    max_steps: int = setting(2000, "Optimizer steps.")
    batch_size: int = setting(16, "Windows per micro-batch.")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.")
    context: int | None = setting(None, "Training sequence length (default: the preset's).")
    # Sequence-length warm-up (Li et al. 2022, "The Stability-Efficiency Dilemma"): the first
    # `short_context_steps` steps train on the first `short_context` tokens of each window.
    # Short steps are cheap, so a time budget buys more of them, and copying from the context
    # (an induction circuit) forms after a number of optimizer steps more than of tokens.
    short_context: int | None = setting(None, "Sequence-length warm-up: train on this many tokens of each window first.")
    short_context_steps: int = setting(0, "Steps of the sequence-length warm-up.")
    lr: float | None = setting(None, "Peak learning rate (default: the preset's).")
    min_lr_ratio: float = setting(0.1, "Cosine decay ends at this share of the peak (GPT-3 §B: 0.1).")
    warmup_steps: int | None = setting(None, "Linear warm-up steps (default: 2% of --max-steps, at least 10).")
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices (GPT-3 §B).")
    beta1: float = setting(0.9, "AdamW beta1 (GPT-3 §B).")
    beta2: float = setting(0.95, "AdamW beta2 (GPT-3 §B).")
    eps: float = setting(1e-8, "AdamW epsilon (GPT-3 §B).")
    grad_clip: float = setting(1.0, "Gradient-norm clip (GPT-3 §B).")
    optimizer: Optimizer = setting("adamw", "adamw (GPT-3), or muon: Muon for the blocks' matrices, AdamW for the rest.")
    dropout: float = setting(0.0, "Dropout probability.")
    attention: str | None = setting(None, "The layers' sequence mixer: dense, local or alternating (GPT-3); lstm (a "
                                          "same-size recurrent baseline); linear, rfa, rfa-gate, aft, sru or ssm (O(1) "
                                          "decoding state); aft-local (its bias spans --window); gau (exact attention within "
                                          "chunks of --window); xl (segments of --window); or a comma-separated "
                                          "cycle such as linear,dense (default: the preset's).")
    window: int | None = setting(None, "Band width of local attention, of AFT-local's position bias, of GAU's chunks "
                                       "and of Transformer-XL's segments.")
    eval_every: int = setting(100, "Steps between validation losses.")
    eval_batches: int = setting(8, "Batches per validation loss.")
    save_every: int = setting(200, "Steps between checkpoints.")
    keep_last: int = setting(3, "Checkpoints to keep.")
    log_every: int = setting(10, "Steps between rows of metrics.csv.")
    seed: int = setting(0, "Seed of the initial weights, data order and dropout.")
    precision: Precision = setting("auto", "auto, fp32 or bf16 (autocast).")
    compile: bool = setting(False, "torch.compile the model.")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N.")
    strategy: Literal["ddp", "fsdp"] = setting("ddp", "Under torchrun: ddp (replicate) or fsdp (shard, FSDP2).")
    max_time: float | None = setting(None, "Stop and save after this many seconds.")
    # At 5%, 25%, 50% and 75% of the time, refit max_steps from the step time measured so
    # far, so that the schedule ends when the time does (fewshot.train.schedule.StepFit).
    fit_steps_to_time: bool = setting(False, "With --max-time, one process: refit --max-steps to the measured step time.")
    progress: bool = setting(True, "Show a progress bar.")
    tensorboard: bool = setting(True, "Also log to TensorBoard (tb/ in the run directory).")
    model_overrides: dict[str, Any] = field(default_factory=dict)
    finetune: FinetuneConfig | None = None  # set by `fewshot finetune`: `data` is then a JSONL file of examples

    def __post_init__(self) -> None:
        if isinstance(self.finetune, dict):  # read back from config.json
            object.__setattr__(self, "finetune", FinetuneConfig(**self.finetune))
        positive = ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "save_every", "keep_last", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise FewshotError(f"train: --{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise FewshotError(f"train: --lr must be > 0, got {self.lr}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise FewshotError(f"train: --warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.context is not None and self.context < 2:
            raise FewshotError(f"train: --context must be >= 2, got {self.context}")
        if self.short_context_steps < 0:
            raise FewshotError(f"train: --short-context-steps must be >= 0, got {self.short_context_steps}")
        if self.short_context is not None and self.short_context < 2:
            raise FewshotError(f"train: --short-context must be >= 2, got {self.short_context}")
        if self.short_context_steps and self.short_context is None:
            raise FewshotError("train: --short-context-steps needs --short-context (the warm-up window length)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise FewshotError(f"train: --precision must be auto, fp32 or bf16, got {self.precision!r}")
        check_optimizer(self.optimizer)
        if self.finetune is not None and self.finetune.method != "full" and (self.optimizer == "muon" or self.strategy == "fsdp"):
            # An adapter's vectors and thin matrices are not what Muon orthogonalises, and
            # peft's modules are not sharded here.
            raise FewshotError("finetune: lora and ia3 train with --optimizer adamw and --strategy ddp")
        if self.optimizer == "muon" and self.strategy == "fsdp":
            # Muon orthogonalises whole matrices; FSDP gives each rank a shard of one.
            raise FewshotError("train: --optimizer muon needs whole matrices on every rank: use --strategy ddp")
        if self.strategy not in ("ddp", "fsdp"):
            raise FewshotError(f"train: --strategy must be ddp or fsdp, got {self.strategy!r}")
        if self.max_time is not None and self.max_time <= 0:
            raise FewshotError(f"train: --max-time must be > 0 seconds, got {self.max_time}")
        preset(self.preset)  # fail early on an unknown name

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else _row(self.preset).lr

    def window_length(self, step: int, context: int) -> int:
        """Tokens of each training window used at `step` (the sequence-length warm-up)."""
        if self.short_context is not None and step < self.short_context_steps:
            return min(self.short_context, context)
        return context

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(10, self.max_steps // 50)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The preset, adapted to this run's vocabulary and options."""
        changes: dict[str, Any] = {"vocab_size": vocab_size, "dropout": self.dropout}
        if self.context is not None:
            changes["context"] = self.context
        if self.attention is not None:
            changes["attention"] = self.attention
        if self.window is not None:
            changes["window"] = self.window
        changes.update(self.model_overrides)
        return preset(self.preset).replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
