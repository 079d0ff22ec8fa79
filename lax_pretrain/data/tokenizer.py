"""Tokenizers: byte-level by default (no file, works offline), a SentencePiece model, or a Hugging Face
`tokenizer.json` (the papers' T5 tokenizer, as researchers hold it).

`data.tokenizer` selects one:
  - 'byte';
  - a SentencePiece model file ('/path/to/x.model', T5's 'spiece.model');
  - a Hugging Face `tokenizer.json` file, or a directory holding one (what `save_pretrained` writes).
Files are read through `etils.epath`: local paths, gs:// and s3:// (with gcsfs / s3fs installed). epath has no
file:// scheme, so a `file://` prefix is stripped and the rest read as a local path. A Hub name ('t5-base') is not
downloaded: save the tokenizer to a directory first.

`train_sentencepiece` makes a SentencePiece model from any text (scripts/train_tokenizer.py runs it on a
dataset's train split).

Vocabulary size and T5's extra ids: `vocab_size` (what train/validate.py compares with model.vocab_size) is the
number of ids natural text can produce. Special tokens named `<extra_id_N>` (T5's span-corruption sentinels) that
form the top block of the vocabulary are left out of it when the tokenizer has an unknown token: T5 counts 32,000
(its spiece.model's pieces), not the Hugging Face tokenizer's 32,100, so the LLaMA configs' model.vocab_size=32000
is accepted. If a document does produce such an id (HF tokenizes the literal text '<extra_id_0>' to 32099),
`encode` maps every id >= vocab_size to the unknown id and counts it in the tokenizer's `unk_mapped` (per process:
grain worker processes count in their own copy; the first mapping is logged once).

Every tokenizer has a `fingerprint`: 'byte', or the sha256 of the model / tokenizer.json bytes (what a prepared
token cache records).
"""

import functools
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import sentencepiece as spm
import tokenizers
from etils import epath

_log = logging.getLogger(__name__)

_EXTRA_ID = re.compile(r"<extra_id_\d+>")
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")
_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>")
_MAKE_ONE = "Make one with scripts/train_tokenizer.py."


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    fingerprint: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted past the three special ids: every string round-trips, no byte collides with them."""

    pad_id, bos_id, eos_id = 0, 1, 2
    _offset = 3
    vocab_size = 256 + _offset
    fingerprint = "byte"

    def encode(self, text: str) -> list[int]:
        return [b + self._offset for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self._offset for i in ids if int(i) >= self._offset)
        return data.decode("utf-8", errors="replace")


def _path(spec: str) -> epath.Path:
    """`spec` as an epath.Path; 'file://' is stripped (epath has no such scheme)."""
    local = spec.removeprefix("file://")
    try:
        return epath.Path(local)
    except KeyError:  # epath's registry of URL schemes
        raise ValueError(
            f"data.tokenizer={spec!r} has a URL scheme that cannot be read: use a local path, file://, gs:// or "
            "s3:// (with gcsfs / s3fs installed)"
        ) from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _without_top_extra_ids(total: int, name_of: Callable[[int], str | None], unk_id: int) -> int:
    """The vocabulary size without the `<extra_id_N>` tokens at its top (none left out without an unk id)."""
    n = total
    while unk_id >= 0 and n > 0 and _EXTRA_ID.fullmatch(name_of(n - 1) or ""):
        n -= 1
    return n


class _UnkAboveVocab:
    """Maps ids >= vocab_size (T5's extra ids met in text) to unk_id and counts them in `unk_mapped`."""

    vocab_size: int
    unk_id: int
    unk_mapped: int = 0

    def _clip(self, ids: list[int]) -> list[int]:
        if not ids or max(ids) < self.vocab_size:
            return ids
        n = sum(i >= self.vocab_size for i in ids)
        if not self.unk_mapped:
            _log.warning(
                "data.tokenizer=%r: text produced ids >= vocab_size %d (e.g. T5's <extra_id_N>); they are mapped "
                "to the unknown id %d and counted in the tokenizer's unk_mapped",
                self.path,
                self.vocab_size,
                self.unk_id,
            )
        self.unk_mapped += n
        return [self.unk_id if i >= self.vocab_size else i for i in ids]


class SentencePieceTokenizer(_UnkAboveVocab):
    """A SentencePiece model file. Pads are always masked by the pipelines' weights, so a model without a pad
    piece (pad_id -1 in SentencePiece) pads with id 0 and the value never reaches the loss.

    `vocab_size` is the piece count less any `<extra_id_N>` pieces at the top (module docstring; T5's
    spiece.model has none: 32,000). Those pieces, if ever produced, are mapped to the unk id and counted in
    `unk_mapped`."""

    def __init__(self, path: str, *, data: bytes | None = None):
        self.path = path
        if data is None:
            data = _path(path).read_bytes()
        self.fingerprint = hashlib.sha256(data).hexdigest()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError as e:
            raise ValueError(
                f"data.tokenizer={path!r} is not a SentencePiece model ({_first_line(e)}). {_MAKE_ONE}"
            ) from None
        self.unk_id = self._sp.unk_id()
        self.vocab_size = _without_top_extra_ids(self._sp.vocab_size(), self._sp.id_to_piece, self.unk_id)
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
        return self._clip(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


class HFTokenizer(_UnkAboveVocab):
    """A Hugging Face `tokenizer.json` (the `tokenizers` library), given as the file or a directory holding it.

    Built so that the pipelines' rows equal the Hugging Face call the papers make (exactly, id for id):
    `AutoTokenizer.from_pretrained(...)(text, max_length=L, truncation=True, padding="max_length")`:
      - `encode` returns the ids without the special tokens the post-processor adds; the pipeline appends
        `eos_id` itself ('cola' keeps it last after truncation, as HF's truncation does), so there is no second
        EOS. Truncation and padding stored in the file are switched off: the pipeline does both.
      - `eos_id`: the special token the post-processor appends (T5: `</s>`, 1), else a token named '</s>',
        '<|endoftext|>', '<|end_of_text|>' or '<eos>'; a tokenizer with none is refused.
      - `bos_id`: the special token the post-processor prepends, else one named '<s>', '<bos>' or
        '<|begin_of_text|>', else -1 (as SentencePiece reports no BOS; T5 has none).
      - `pad_id`: the file's padding id, else `<pad>` (T5: 0), else 0 (pads are masked either way).
      - `vocab_size`: the ids without the special `<extra_id_N>` tokens at the top of the vocabulary when there is
        an unknown token (T5: 32,000, not 32,100). An extra id met in text (the literal '<extra_id_0>', which HF
        encodes as 32099) is mapped to the unknown id (T5: 2) and counted in `unk_mapped`; that is the one place
        where a row differs from the HF call's.
    `decode` drops special tokens, as SentencePiece's decode drops control pieces.
    """

    def __init__(self, path: str, *, data: bytes | None = None):
        self.path = path
        if data is None:
            p = _path(path)
            data = (p / "tokenizer.json" if p.is_dir() else p).read_bytes()
        self.fingerprint = hashlib.sha256(data).hexdigest()
        try:
            config = json.loads(data)
            self._tk = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # json's, utf-8's and the tokenizers library's own errors
            raise ValueError(
                f"data.tokenizer={path!r} is not a Hugging Face tokenizer.json ({_first_line(e)})"
            ) from None
        tk = self._tk
        padding = tk.padding
        pad = padding["pad_id"] if padding else tk.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else pad
        tk.no_padding()
        tk.no_truncation()

        leading, trailing = self._added_specials()
        named = [tk.token_to_id(n) for n in _EOS_NAMES]
        eos = trailing[-1] if trailing else next((i for i in named if i is not None), None)
        if eos is None:
            raise ValueError(
                f"data.tokenizer={path!r} has no end-of-sequence token (its post-processor appends none and it "
                f"has none of {', '.join(_EOS_NAMES)}); the text pipelines need one to separate documents"
            )
        self.eos_id = eos
        named = [tk.token_to_id(n) for n in _BOS_NAMES]
        self.bos_id = leading[0] if leading else next((i for i in named if i is not None), -1)

        model = config.get("model") or {}
        unk = model.get("unk_id") if model.get("type") == "Unigram" else None
        if unk is None and model.get("unk_token") is not None:
            unk = tk.token_to_id(model["unk_token"])
        self.unk_id = -1 if unk is None else unk
        vocab = tk.get_vocab(with_added_tokens=True)
        special = {i: t.content for i, t in tk.get_added_tokens_decoder().items() if t.special}
        self.vocab_size = _without_top_extra_ids(max(vocab.values()) + 1, special.get, self.unk_id)

    def _added_specials(self) -> tuple[list[int], list[int]]:
        """The special ids the post-processor puts before and after a single sequence's ids."""
        enc = self._tk.encode("a b", add_special_tokens=True)
        mask = enc.special_tokens_mask
        real = [k for k, m in enumerate(mask) if not m]
        if not real:  # all specials: count them as appended (an EOS is the common case)
            return [], list(enc.ids)
        return list(enc.ids[: real[0]]), list(enc.ids[real[-1] + 1 :])

    def encode(self, text: str) -> list[int]:
        return self._clip(self._tk.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=True)


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str) -> Tokenizer:
    """`data.tokenizer` (module docstring) -> its tokenizer (cached: pipelines and callers share one instance).

    A directory must hold a tokenizer.json; a file is a tokenizer.json if its name ends in '.json' or its bytes
    are JSON, else a SentencePiece model. Anything else is refused in one line naming data.tokenizer."""
    if spec == "byte":
        return ByteTokenizer()
    path = _path(spec)
    try:
        if path.is_dir():
            json_path = path / "tokenizer.json"
            if json_path.exists():
                return HFTokenizer(spec, data=json_path.read_bytes())
            hint = f"; for its SentencePiece model pass {str(path / 'spiece.model')!r}"
            raise FileNotFoundError(
                f"data.tokenizer={spec!r} is a directory without a Hugging Face tokenizer.json"
                + (hint if (path / "spiece.model").exists() else "")
            )
        data = path.read_bytes()
    except FileNotFoundError as e:
        if str(e).startswith("data.tokenizer="):
            raise
        raise _not_found(spec, e) from e
    except OSError as e:
        raise _not_found(spec, e) from e
    if spec.endswith(".json") or data.lstrip()[:1] == b"{":
        return HFTokenizer(spec, data=data)
    return SentencePieceTokenizer(spec, data=data)


def _not_found(spec: str, e: OSError) -> FileNotFoundError:
    looks_like_hub_name = (
        "://" not in spec
        and not spec.startswith(("/", ".", "~"))
        and spec.count("/") <= 1
        and not spec.endswith((".model", ".json"))
    )
    hub = (
        " A Hub name is not downloaded: save the tokenizer to a directory first "
        "(AutoTokenizer.from_pretrained(name).save_pretrained(dir))."
        if looks_like_hub_name
        else ""
    )
    return FileNotFoundError(
        f"data.tokenizer={spec!r} is neither 'byte' nor a readable SentencePiece .model file, Hugging Face "
        f"tokenizer.json or directory holding one ({e.strerror or _first_line(e)}).{hub} {_MAKE_ONE}"
    )


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


def train_t5_layout_sentencepiece(
    lines: Iterable[str], *, vocab_size: int, hard_vocab_limit: bool = True, num_threads: int = 1
) -> bytes:
    """A unigram SentencePiece model in T5's layout (pad 0, `</s>` 1, `<unk>` 2, no BOS; SentencePiece's default
    normalization) trained on `lines`: what `transformers.T5Tokenizer` converts into a tokenizer.json, and a
    stand-in for t5-base's spiece.model where there is no network. `hard_vocab_limit=False` takes as many pieces
    as the text supports up to `vocab_size`; one thread keeps training deterministic."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=hard_vocab_limit,
        num_threads=num_threads,
        minloglevel=2,
    )
    return model.getvalue()
