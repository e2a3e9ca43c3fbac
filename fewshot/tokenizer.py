"""Text <-> token ids: a byte tokenizer (the default) and byte-level BPE (HF `tokenizers`).

Both tokenizers share one small interface (`encode`, `decode`, `encode_batch`, `spec`,
`save`) and one contract: every token id stands for a fixed string of bytes, so
`decode(encode(s)) == s` for any valid Unicode string, and decoding is just "join the
bytes, then read them as UTF-8". `StreamDecoder` builds on the same bytes to print
generated text token by token without splitting a multibyte character.

`spec()` goes into config.json; `load_tokenizer(spec, directory)` brings the tokenizer
back, reading `tokenizer.json` from the directory for BPE.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from fewshot.errors import FewshotError
from fewshot.files import atomic_write_text

EOT = "<|endoftext|>"
# The byte vocabulary is fixed forever, so it keeps a few ids free for specials that later
# features may need; a model trained today then still fits them (vocab 260, config.py).
BYTE_SPECIALS = (EOT, "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>")
# A BPE vocabulary is trained per corpus anyway, so it carries only the separator.
BPE_SPECIALS = (EOT,)
TOKENIZER_FILE = "tokenizer.json"
# What an id outside the vocabulary decodes to. A model may have more output rows than
# its tokenizer has ids (a padded vocabulary), and a stray sample must not crash streaming.
UNKNOWN_BYTES = "\ufffd".encode()


def _gpt2_byte_chars() -> dict[int, str]:
    """Byte -> printable character, the byte-level BPE alphabet (GPT-2's `bytes_to_unicode`).

    HF's ByteLevel pre-tokenizer writes each byte as one of these characters, so the vocab
    stores tokens as such strings. `tokenizers` exposes the alphabet but not the mapping,
    and the mapping is what turns a single token back into its bytes for streaming.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in chars)
    chars.update((b, chr(256 + n)) for n, b in enumerate(others))
    return chars


BYTE_OF_CHAR = {c: b for b, c in _gpt2_byte_chars().items()}


class ByteTokenizer:
    """ids 0..255 are the UTF-8 bytes of the text; 256 is <|endoftext|>; 257..259 reserved.

    No training, nothing to save, and any text is at most 4 ids per character.
    """

    vocab_size = 256 + len(BYTE_SPECIALS)
    eot_id = 256
    stop_ids = frozenset({eot_id})
    chat_template = None

    def __init__(self) -> None:
        self._bytes = [bytes([b]) for b in range(256)] + [name.encode() for name in BYTE_SPECIALS]

    def encode(self, text: str) -> list[int]:
        # A literal "<|endoftext|>" in the text stays 13 bytes: only the data pipeline
        # places separators, so a prompt cannot forge a document boundary.
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise _lone_surrogate(error) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return _join(self._bytes, ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def spec(self) -> dict:
        return {"type": "byte"}

    def save(self, directory: Path) -> None:
        """Nothing to write: config.json's spec says everything."""

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme, GPT-3 §2.2) trained and run by HF `tokenizers`.

    The text is cut by GPT-2's regex, each piece is written as bytes and merged by the
    learned rules. There is no normalizer: NFC or lowercasing would make `decode(encode(s))`
    differ from `s`, and the alphabet holds all 256 bytes, so no text is ever unknown.
    """

    def __init__(self, hf: HFTokenizer, eot: str = EOT, stop: Sequence[str] = (), parse_special: bool = False,
                 chat_template: str | None = None) -> None:
        """`eot` separates documents; generation also stops at the `stop` tokens.

        Imported models (GGUF) bring their own specials, such as SmolLM2's <|im_start|>
        and <|im_end|>, and their chat template. For them `parse_special` reads a special
        written in the text as its id, as llama.cpp does, so a chat prompt means what the
        model was trained on.
        """
        eot_id = hf.token_to_id(eot)
        if not isinstance(hf.model, models.BPE) or eot_id is None:
            raise FewshotError(f"not a fewshot BPE tokenizer (needs a BPE model with {eot}); retrain it with `fewshot prepare --tokenizer bpe`")
        stop_ids = [hf.token_to_id(token) for token in stop]
        if None in stop_ids:
            raise FewshotError(f"stop token {stop[stop_ids.index(None)]!r} is not in the vocabulary")
        self._hf = hf
        # By default a literal "<|endoftext|>" in the text is encoded as ordinary text (<|,
        # endoftext, |>), as with the byte tokenizer: it still round-trips, and a prompt cannot
        # forge the separator id. `tokenizers` does not save this flag, so it is set on every load.
        hf.encode_special_tokens = not parse_special
        self.eot_id = eot_id
        self.stop_ids = frozenset({eot_id, *stop_ids})
        # What spec() records beyond the defaults, so a trained BPE's spec stays as it was.
        options = {"eot": eot, "stop": list(stop), "parse_special": parse_special, "chat_template": chat_template}
        defaults = {"eot": EOT, "stop": [], "parse_special": False, "chat_template": None}
        self._spec_options = {key: value for key, value in options.items() if value != defaults[key]}
        self.chat_template = chat_template
        self._bytes = self._token_bytes()
        self.vocab_size = len(self._bytes)

    def token_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def _token_bytes(self) -> list[bytes]:
        vocab = self._hf.get_vocab(with_added_tokens=True)
        specials = {token.content for token in self._hf.get_added_tokens_decoder().values()}
        # Sized by the largest id, not the token count: the model needs a row for every id.
        table = [UNKNOWN_BYTES] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            try:
                table[i] = token.encode() if token in specials else bytes(BYTE_OF_CHAR[c] for c in token)
            except KeyError:
                raise FewshotError(f"token {token!r} (id {i}) is not byte-level BPE; retrain the tokenizer with `fewshot prepare --tokenizer bpe`") from None
        return table

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from a stream of texts (never held in memory all at once)."""
        smallest = 256 + len(BPE_SPECIALS) + 1
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
            raise FewshotError(f"BPE vocab size must be at least {smallest} (256 bytes + {EOT} + merges), got {vocab_size!r}; try 8192")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()  # unused by fewshot; makes tokenizer.json complete for HF users
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(BPE_SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even those the corpus lacks
            show_progress=False,
        )
        try:
            hf.train_from_iterator(texts, trainer=trainer)
        except UnicodeEncodeError as error:
            raise _lone_surrogate(error) from None
        # A small corpus may run out of pairs to merge before `vocab_size`; the real size
        # is what spec() records.
        return cls(hf)

    def encode(self, text: str) -> list[int]:
        _check_encodable(text)
        return self._hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        for text in texts:
            _check_encodable(text)
        return [encoding.ids for encoding in self._hf.encode_batch(texts)]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return _join(self._bytes, ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def spec(self) -> dict:
        return {"type": "bpe", "vocab_size": self.vocab_size, **self._spec_options}

    def save(self, directory: Path) -> None:
        """Write directory/tokenizer.json atomically: a crash leaves the old file or the new one."""
        atomic_write_text(Path(directory) / TOKENIZER_FILE, self._hf.to_str(pretty=True))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


Tokenizer = ByteTokenizer | BPETokenizer


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    return BPETokenizer.train(texts, vocab_size)


def load_tokenizer(spec: dict, directory: Path) -> Tokenizer:
    """The tokenizer that `spec` (from config.json) names; BPE reads directory/tokenizer.json."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind != "bpe":
        raise FewshotError(f"unknown tokenizer spec {spec!r}; expected {{\"type\": \"byte\"}} or {{\"type\": \"bpe\", ...}}")
    path = Path(directory) / TOKENIZER_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FewshotError(f"{path}: missing; a BPE run or dataset keeps its tokenizer there, copy it back or re-run prepare") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FewshotError(f"{path}: cannot read ({error}); re-run prepare") from None
    try:
        hf = HFTokenizer.from_str(text)
    except Exception as error:  # `tokenizers` raises a bare Exception for every parse problem
        raise FewshotError(f"{path}: corrupt tokenizer file ({error}); re-run prepare") from None
    try:
        tokenizer = BPETokenizer(hf, eot=spec.get("eot", EOT), stop=spec.get("stop", ()),
                                 parse_special=spec.get("parse_special", False), chat_template=spec.get("chat_template"))
    except FewshotError as error:
        raise FewshotError(f"{path}: {error}") from None
    expected = spec.get("vocab_size")
    if expected is not None and expected != tokenizer.vocab_size:
        raise FewshotError(f"{path}: has {tokenizer.vocab_size} tokens but config.json says {expected}; the file belongs to another run")
    return tokenizer


class StreamDecoder:
    """Decodes a growing list of ids piece by piece, for printing while generating.

    One token may end in the middle of a UTF-8 character (byte tokens always do for
    non-ASCII text), so `feed` returns only the text whose bytes are complete and keeps
    the rest for the next call. Joining every `feed` and the final `flush` gives exactly
    `tokenizer.decode(all_ids)`, invalid bytes included (U+FFFD either way).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Sequence[int]) -> str:
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        """The held-back tail: U+FFFD for a character that never completed, else ""."""
        return self._utf8.decode(b"", final=True)


def _join(table: list[bytes], ids: Sequence[int]) -> bytes:
    size = len(table)
    return b"".join(table[i] if 0 <= i < size else UNKNOWN_BYTES for i in ids)


def _check_encodable(text: str) -> None:
    # Only lone surrogates (U+D800..U+DFFF) make a str unencodable. `tokenizers` would
    # reject them with a bare TypeError, so look first and say where the culprit is.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise _lone_surrogate(error) from None


def _lone_surrogate(error: UnicodeEncodeError) -> FewshotError:
    char = error.object[error.start]
    return FewshotError(
        f"text has a lone surrogate U+{ord(char):04X} at index {error.start}, which is not valid Unicode; "
        "fix the input, or clean it with text.encode('utf-8', 'replace').decode()"
    )
