"""Text pipelines: windows of L+1 tokens -> {'inputs', 'targets': int32[B, L], 'weights': float32[B, L]}.

A window is tokens int32[L+1] plus its length: positions past the length are padding, and weights are 1
exactly where the target is a real token, so pads (short documents, eval top-up rows) never count.

- Shakespeare: each work of the split is tokenized once per process, works are joined with EOS and the stream
  is cut into non-overlapping windows (packing). Train drops the partial last window; eval keeps it, padded.
  With `data.works` the stream is the named works' first `data.works_train_fraction` (train) or the rest (eval).
- Text files (`data.c4_dir`, `data.train_files`: C4 from its JSON shards, any JSON-lines or Parquet corpus):
  streamed and tokenized on the fly (data/stream.py), or read from a token cache prepared once (`data.cache_dir`,
  data/cache.py) as a random-access source. Both cut documents into the rows text_rows.py defines, as below;
  the evaluation reads the validation files (or the cache's validation rows) in order.
- C4 from TFDS (the papers' setup), per `data.document_format`: 'cola' (default, the CoLA/GaLore code)
  truncates each document to L tokens with the EOS kept as the last one (the T5 tokenizer appends `</s>` after
  truncation), pads, and masks pads: the model reads L tokens and L-1 positions are predicted, as in a Hugging
  Face causal LM. 'window' truncates or pads document + EOS to L+1 tokens (L predictions; a long document loses
  its EOS). With `data.packing` the documents are instead concatenated with EOS and split into full windows by
  grain's ConcatThenSplit; each process then packs its own disjoint share of the documents, so the per-process
  slices no longer add up to what a single process would load. Eval is always per document, as in the papers.
"""

import collections
import functools

import grain
import numpy as np

from lax_pretrain.data import cache, pipeline, shakespeare, tfds_io
from lax_pretrain.data import files as files_lib
from lax_pretrain.data.config import source_files, streams_files
from lax_pretrain.data.stream import DocumentStream
from lax_pretrain.data.text_rows import document_rows, document_tokens, document_window
from lax_pretrain.data.tokenizer import Tokenizer


def train_dataset(
    cfg, tok: Tokenizer, *, local_batch: int, seed: int, process_index: int, process_count: int
) -> grain.IterDataset:
    if streams_files(cfg):  # straight from the files (data/stream.py)
        stream = DocumentStream(
            cfg,
            tok,
            source_files(cfg, "train"),
            seed=seed,
            process_index=process_index,
            process_count=process_count,
        )
        return stream.batch(
            local_batch, batch_fn=functools.partial(_rows_batch, seq_len=cfg.seq_len, pad_id=tok.pad_id)
        )
    read, num_records = _reader(cfg, tok, "train")
    rows = pipeline.train_rows(
        num_records,
        local_batch=local_batch,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    if cfg.name == "c4" and cfg.packing and not cfg.cache_dir:  # a cache holds packed rows already
        source = tfds_io.open_split(cfg, "train")
        docs = rows.map(functools.partial(_concatenated_documents, source=source, tok=tok))
        windows = grain.experimental.ConcatThenSplitIterDataset(
            pipeline.to_iter(docs, cfg.worker_count), length_struct={"tokens": cfg.seq_len + 1}
        )
        return windows.batch(local_batch).map(_full_windows_batch)
    return pipeline.to_iter(rows.map(read), cfg.worker_count)


def eval_dataset(
    cfg, tok: Tokenizer, *, global_batch: int, local_batch: int, process_index: int, process_count: int
) -> grain.IterDataset:
    eval_batches = cfg.eval_batches
    if streams_files(cfg):  # just the rows the evaluation needs, from the files
        windows_NxL1, lengths_N = _file_eval_rows(cfg, tok, max_rows=cfg.eval_batches * global_batch)
        read = functools.partial(
            _window_batch, windows_NxL1=windows_NxL1, lengths_N=lengths_N, pad_id=tok.pad_id
        )
        num_records, eval_batches = len(windows_NxL1), 0
    else:
        read, num_records = _reader(cfg, tok, "eval")
    if cfg.eval_tokens and cfg.cache_dir:  # the first rows that hold this many real tokens
        num_records, eval_batches = cache.rows_for_tokens(cfg, tok, "validation", cfg.eval_tokens), 0
    rows = pipeline.eval_rows(
        num_records,
        global_batch=global_batch,
        eval_batches=eval_batches,
        local_batch=local_batch,
        process_index=process_index,
        process_count=process_count,
    )
    return pipeline.to_iter(rows.map(read), cfg.worker_count)


def _reader(cfg, tok: Tokenizer, split: str):
    """The split's batch-level read function (row batch -> text batch) and its number of records."""
    if cfg.name == "shakespeare":
        windows_NxL1, lengths_N = _packed_windows(cfg, tok, split, keep_tail=split == "eval")
        read = functools.partial(
            _window_batch, windows_NxL1=windows_NxL1, lengths_N=lengths_N, pad_id=tok.pad_id
        )
        return read, len(windows_NxL1)
    if cfg.cache_dir:
        source, dtype, _ = cache.open_split(cfg, tok, "train" if split == "train" else "validation")
        read = functools.partial(
            _cached_batch, source=source, dtype=dtype, seq_len=cfg.seq_len, pad_id=tok.pad_id
        )
        return read, len(source)
    source = tfds_io.open_split(cfg, split)
    return functools.partial(
        _document_batch, source=source, tok=tok, seq_len=cfg.seq_len, document_format=cfg.document_format
    ), len(source)


def decode_text(text) -> str:
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


_streams: dict[tuple, np.ndarray] = {}


def _work_texts(cfg, split: str) -> list[str]:
    """The split's works, or with data.works the selected works' train / eval parts (in the order named)."""
    if not cfg.works:
        return [
            decode_text(w["text"]) for w in sorted(tfds_io.open_split(cfg, split), key=lambda w: w["title"])
        ]
    names = shakespeare.parse_works(cfg.works)
    records = {
        decode_text(w["work"]): decode_text(w["text"])
        for part in ("train", "eval")
        for w in tfds_io.open_split(cfg, part)
    }
    cuts = {name: int(len(records[name]) * cfg.works_train_fraction) for name in names}
    return [records[n][: cuts[n]] if split == "train" else records[n][cuts[n] :] for n in names]


def _work_stream(cfg, tok: Tokenizer, split: str) -> np.ndarray:
    """All works of the split as one token stream, EOS after each (tokenized once per process)."""
    key = (tfds_io.data_dir(cfg), split, cfg.tokenizer, cfg.works, cfg.works_train_fraction)
    if key not in _streams:
        ids = []
        for text in _work_texts(cfg, split):
            ids += tok.encode(text)
            ids.append(tok.eos_id)
        _streams[key] = np.asarray(ids, np.int32)
    return _streams[key]


def _packed_windows(cfg, tok: Tokenizer, split: str, *, keep_tail: bool) -> tuple[np.ndarray, np.ndarray]:
    stream = _work_stream(cfg, tok, split)
    width = cfg.seq_len + 1
    n = -(-len(stream) // width) if keep_tail else len(stream) // width
    windows_NxL1 = np.full((n, width), tok.pad_id, np.int32)
    windows_NxL1.reshape(-1)[: min(len(stream), n * width)] = stream[: n * width]
    lengths_N = np.full(n, width, np.int32)
    if n * width > len(stream):
        lengths_N[-1] = len(stream) - (n - 1) * width
    return windows_NxL1, lengths_N


def _window_batch(rows: dict, *, windows_NxL1: np.ndarray, lengths_N: np.ndarray, pad_id: int) -> dict:
    index_B = rows["index"]
    real_B = index_B != pipeline.TOP_UP  # TOP_UP (-1) indexes the last window; np.where blanks those rows
    tokens_BxL1 = np.where(real_B[:, None], windows_NxL1[index_B], pad_id).astype(np.int32)
    return _to_batch(tokens_BxL1, np.where(real_B, lengths_N[index_B], 0))


def _document_tokens(record, tok: Tokenizer) -> np.ndarray:
    return document_tokens(decode_text(record["text"]), tok)


def _document_batch(rows: dict, *, source, tok: Tokenizer, seq_len: int, document_format: str) -> dict:
    records = pipeline.read(source, rows["index"])
    tokens_BxL1 = np.full((len(records), seq_len + 1), tok.pad_id, np.int32)
    lengths_B = np.zeros(len(records), np.int32)
    for i, record in enumerate(records):
        if record is not None:
            ids = document_window(_document_tokens(record, tok), seq_len, document_format)
            tokens_BxL1[i, : len(ids)] = ids
            lengths_B[i] = len(ids)
    return _to_batch(tokens_BxL1, lengths_B)


def _file_eval_rows(cfg, tok: Tokenizer, *, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation's rows, read by every process from the validation files in order (sorted files, each in
    file order), each process then taking its slice of every batch: the first rows holding `data.eval_tokens`
    real tokens, else the first `max_rows` (0: all). Held in host memory: (rows, seq_len + 1) int32."""
    counts = collections.Counter()
    texts = (
        t
        for url in source_files(cfg, "validation")
        for t in files_lib.read_documents(
            url, text_key=cfg.text_key, on_bad_record=cfg.on_bad_record, counts=counts
        )
    )
    rows, tokens = [], 0
    for row in document_rows(texts, tok, cfg.seq_len, cfg.document_format):
        rows.append(row)
        tokens += len(row)
        if (tokens >= cfg.eval_tokens) if cfg.eval_tokens else (max_rows and len(rows) >= max_rows):
            break
    windows_NxL1 = np.full((len(rows), cfg.seq_len + 1), tok.pad_id, np.int32)
    for i, row in enumerate(rows):
        windows_NxL1[i, : len(row)] = row
    return windows_NxL1, np.asarray([len(r) for r in rows], np.int32)


def _rows_batch(rows: list[np.ndarray], *, seq_len: int, pad_id: int) -> dict:
    tokens_BxL1 = np.full((len(rows), seq_len + 1), pad_id, np.int32)
    for i, row in enumerate(rows):
        tokens_BxL1[i, : len(row)] = row
    return _to_batch(tokens_BxL1, np.asarray([len(r) for r in rows], np.int32))


def _cached_batch(rows: dict, *, source, dtype: np.dtype, seq_len: int, pad_id: int) -> dict:
    records = pipeline.read(source, rows["index"], batched=False)
    tokens_BxL1 = np.full((len(records), seq_len + 1), pad_id, np.int32)
    lengths_B = np.zeros(len(records), np.int32)
    for i, record in enumerate(records):
        if record is not None:
            ids = np.frombuffer(record, dtype)
            tokens_BxL1[i, : len(ids)] = ids
            lengths_B[i] = len(ids)
    return _to_batch(tokens_BxL1, lengths_B)


def _concatenated_documents(rows: dict, *, source, tok: Tokenizer) -> dict:
    # One element per batch of documents: concatenating them first splits into the same windows.
    records = pipeline.read(source, rows["index"])
    return {"tokens": np.concatenate([_document_tokens(record, tok) for record in records])}


def _full_windows_batch(packed: dict) -> dict:
    tokens_BxL1 = packed["tokens"]
    return _to_batch(tokens_BxL1, np.full(len(tokens_BxL1), tokens_BxL1.shape[1], np.int32))


def _to_batch(tokens_BxL1: np.ndarray, lengths_B: np.ndarray) -> dict:
    seq_len = tokens_BxL1.shape[1] - 1
    # The target at position t is token t+1, which is real iff t+1 < length.
    weights_BxL = np.arange(1, seq_len + 1)[None, :] < lengths_B[:, None]
    return {
        "inputs": tokens_BxL1[:, :-1],
        "targets": tokens_BxL1[:, 1:],
        "weights": weights_BxL.astype(np.float32),
    }
