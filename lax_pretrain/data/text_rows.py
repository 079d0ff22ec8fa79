"""Documents -> rows of token ids: the one definition both the TFDS reader and the token cache use.

A row is at most seq_len + 1 tokens (the model reads the first seq_len, predicts the last seq_len); positions past
a row's length are padding and are masked.
- 'cola' (the CoLA/GaLore code): the document's tokens then EOS, cut to seq_len tokens with the EOS kept last
  (what Hugging Face's T5 tokenizer gives for `max_length=seq_len, truncation=True`: it appends `</s>` itself).
- 'window': document + EOS cut to seq_len + 1 tokens (a long document loses its EOS).
- packed: documents joined with EOS and cut into full windows of seq_len + 1 tokens; the tail is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from lax_pretrain.data.tokenizer import Tokenizer


def document_tokens(text: str, tok: Tokenizer) -> np.ndarray:
    return np.asarray(tok.encode(text) + [tok.eos_id], np.int32)


def document_window(ids: np.ndarray, seq_len: int, document_format: str) -> np.ndarray:
    """A document's tokens (EOS last) cut to what one row holds: L tokens ending in EOS ('cola'), or the
    first L+1 ('window')."""
    if document_format == "cola":
        return ids if len(ids) <= seq_len else np.append(ids[: seq_len - 1], ids[-1])
    return ids[: seq_len + 1]


def document_rows(
    texts: Iterable[str], tok: Tokenizer, seq_len: int, document_format: str
) -> Iterator[np.ndarray]:
    """One row per document."""
    for text in texts:
        yield document_window(document_tokens(text, tok), seq_len, document_format)


def packed_rows(
    texts: Iterable[str], tok: Tokenizer, seq_len: int, document_format: str
) -> Iterator[np.ndarray]:
    """Full windows of seq_len + 1 tokens over the documents joined with EOS (`document_format` does not apply)."""
    del document_format
    width = seq_len + 1
    pending: list[np.ndarray] = []
    held = 0
    for text in texts:
        ids = document_tokens(text, tok)
        pending.append(ids)
        held += len(ids)
        if held >= width:
            stream = np.concatenate(pending)
            n = len(stream) // width
            yield from stream[: n * width].reshape(n, width)
            pending, held = [stream[n * width :]], len(stream) - n * width
