"""Tokenizers: byte-level by default (no file, works offline), or a SentencePiece model given by path.

`data.tokenizer` selects one: 'byte' or '/path/to/x.model'. `train_sentencepiece` makes such a model from any
text (scripts/train_tokenizer.py runs it on a dataset's train split).
"""

import functools
import io
from collections.abc import Iterable, Sequence
from typing import Protocol

import sentencepiece as spm


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past the three special ids: every string round-trips, no byte collides with them."""

    pad_id, bos_id, eos_id = 0, 1, 2
    _offset = 3
    vocab_size = 256 + _offset

    def encode(self, text: str) -> list[int]:
        return [b + self._offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self._offset for i in ids if int(i) >= self._offset)
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece model file. Pads are always masked by the pipelines' weights, so a model without a pad
    piece (pad_id -1 in SentencePiece) pads with id 0 and the value never reaches the loss."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            self._sp = spm.SentencePieceProcessor(model_proto=f.read())
        self.vocab_size = self._sp.vocab_size()
        self.pad_id = max(self._sp.pad_id(), 0)
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        if self.eos_id < 0:
            raise ValueError(
                f"data.tokenizer={path!r} has no end-of-sequence piece; the text pipelines need one "
                "to separate documents. Train the model with eos_id set "
                "(scripts/train_tokenizer.py does)."
            )

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str) -> Tokenizer:
    """'byte' or a SentencePiece model path (cached: pipelines and callers share one instance)."""
    if spec == "byte":
        return ByteTokenizer()
    try:
        return SentencePieceTokenizer(spec)
    except OSError as e:
        raise FileNotFoundError(
            f"data.tokenizer={spec!r} is neither 'byte' nor a readable SentencePiece .model "
            f"file ({e.strerror}). Make one with scripts/train_tokenizer.py."
        ) from e


def train_sentencepiece(lines: Iterable[str], *, vocab_size: int, model_type: str = "bpe") -> bytes:
    """Trains a SentencePiece model on `lines` and returns the serialized model.

    Deterministic (one trainer thread: SentencePiece's multi-threaded training is not). The ids match the byte
    tokenizer's specials (pad 0, bos 1, eos 2; unk 3), and the text is not normalized, whitespace is kept and
    newlines are a piece of their own, so decode(encode(s)) == s for any s (unseen characters become bytes).
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        user_defined_symbols=["\n"],
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()
