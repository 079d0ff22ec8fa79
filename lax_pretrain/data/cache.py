"""A prepared token cache: text files tokenized once into ArrayRecord shards of rows, read by training as a
random-access source (a global shuffle through grain, exact resume on any number of processes).

    DIR/settings.json                    what every row depends on: tokenizer (spec and fingerprint), seq_len,
                                         document format, packing, text key; and each split's source files
    DIR/<split>/<i>.array_record         the rows of source file i of the split (sorted file order)
    DIR/<split>/<i>.json                 written last, atomically: that shard is finished (counts, bad records)

A row is one record: its tokens as little-endian uint16 (uint32 if the vocabulary needs it), as long as the row
(`data.document_format` 'cola': a document cut to seq_len tokens with EOS last; 'window': seq_len + 1 tokens;
`data.packing`: documents joined with EOS and cut into full windows of seq_len + 1, each source file's tail
dropped). The row is exactly what the streaming path builds from the same document (text.document_window).

`prepare` is resumable (finished shards are kept) and splits the files of a split among `num_shards` hosts
(`shard_index`); a cache is complete when every source file of every split has its finished shard. A cache built
with another tokenizer, seq_len, format, packing or text key than the run asks for is refused naming the key.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lax_pretrain.data import files as files_lib
from lax_pretrain.data.text_rows import document_rows, packed_rows
from lax_pretrain.data.tokenizer import Tokenizer

SETTINGS = "settings.json"
SPLITS = ("train", "validation")
FORMAT_VERSION = 1
# The data.* keys a row depends on: a cache is used only by runs that ask for the same.
ROW_KEYS = ("seq_len", "document_format", "packing", "text_key")


def row_dtype(vocab_ids: int) -> np.dtype:
    return np.dtype("<u2") if vocab_ids <= 1 << 16 else np.dtype("<u4")


def settings_for(cfg: Any, tok: Tokenizer, sources: dict[str, list[str]]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": cfg.tokenizer,
        "tokenizer_fingerprint": tok.fingerprint,
        **{key: cfg[key] for key in ROW_KEYS},
        "dtype": row_dtype(tok.vocab_size).str,
        "sources": {
            split: [{"file": f, "bytes": files_lib.file_size(f)} for f in split_files]
            for split, split_files in sources.items()
        },
    }


def shard_path(cache_dir: str | Path, split: str, index: int) -> Path:
    return Path(cache_dir) / split / f"{index:05d}.array_record"


def write_shard(cfg: Any, tok: Tokenizer, settings: dict, split: str, index: int) -> dict:
    """Tokenizes source file `index` of `split` into its shard; returns (and writes, last) its summary."""
    from array_record.python.array_record_module import ArrayRecordWriter

    source = settings["sources"][split][index]["file"]
    out = shard_path(cfg.cache_dir, split, index)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    dtype = np.dtype(settings["dtype"])
    bad: collections.Counter = collections.Counter()
    n_documents = 0

    def documents():
        nonlocal n_documents
        for text in files_lib.read_documents(
            source, text_key=cfg.text_key, on_bad_record=cfg.on_bad_record, counts=bad
        ):
            n_documents += 1
            yield text

    make_rows = packed_rows if cfg.packing else document_rows
    # group_size:1: every record its own chunk, so a random read decodes one row.
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    rows = tokens = 0
    try:
        for row in make_rows(documents(), tok, cfg.seq_len, cfg.document_format):
            writer.write(row.astype(dtype).tobytes())
            rows += 1
            tokens += len(row)
    finally:
        writer.close()
    os.replace(tmp, out)
    summary = {
        "source": source,
        "documents": n_documents,
        "rows": rows,
        "tokens": tokens,
        "bad_records": dict(bad),
    }
    done = out.with_suffix(".json")
    done.with_name(done.name + ".tmp").write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(done.with_name(done.name + ".tmp"), done)
    return summary


def finished(cache_dir: str | Path, split: str, index: int) -> dict | None:
    path = shard_path(cache_dir, split, index).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None


def read_settings(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / SETTINGS
    if not path.exists():
        raise FileNotFoundError(
            f"data.cache_dir={str(cache_dir)!r} holds no prepared cache ({SETTINGS} missing): make one with "
            "`lax-data prepare --config=... --out=DIR`"
        )
    return json.loads(path.read_text())


def check_settings(cfg: Any, tok: Tokenizer, settings: dict) -> None:
    """Refuses a cache whose rows were made differently from what the run asks for, naming the key."""
    where = f"data.cache_dir={cfg.cache_dir!r}"
    if settings.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{where} has cache format {settings.get('format_version')}, this version reads {FORMAT_VERSION}"
        )
    if settings["tokenizer_fingerprint"] != tok.fingerprint:
        raise ValueError(
            f"{where} was tokenized with data.tokenizer={settings['tokenizer']!r}, not this run's "
            f"data.tokenizer={cfg.tokenizer!r} (their files differ)"
        )
    for key in ROW_KEYS:
        if settings[key] != cfg[key]:
            raise ValueError(
                f"{where} was prepared with data.{key}={settings[key]!r}; this run has {cfg[key]!r}"
            )


def open_split(cfg: Any, tok: Tokenizer, split: str):
    """The split's rows as a random-access source of uint16/uint32 arrays (grain's ArrayRecordDataSource),
    and the split's totals. Refuses a cache made otherwise or not finished."""
    import grain

    settings = read_settings(cfg.cache_dir)
    check_settings(cfg, tok, settings)
    n = len(settings["sources"][split])
    summaries = [finished(cfg.cache_dir, split, i) for i in range(n)]
    missing = [i for i, s in enumerate(summaries) if s is None]
    if missing:
        raise FileNotFoundError(
            f"data.cache_dir={cfg.cache_dir!r}: {len(missing)} of {n} {split} shards are not prepared yet "
            f"(e.g. {settings['sources'][split][missing[0]]['file']}); run `lax-data prepare` again"
        )
    paths = [str(shard_path(cfg.cache_dir, split, i)) for i, s in enumerate(summaries) if s["rows"]]
    totals = collections.Counter()
    for s in summaries:
        totals.update({k: s[k] for k in ("documents", "rows", "tokens")})
        totals.update({f"bad_{k}": v for k, v in s["bad_records"].items()})
    return grain.sources.ArrayRecordDataSource(paths), np.dtype(settings["dtype"]), dict(totals)


def rows_for_tokens(cfg: Any, tok: Tokenizer, split: str, tokens: int) -> int:
    """How many of the split's first rows hold `tokens` real (non-pad) tokens; all rows if it has fewer."""
    source, dtype, _ = open_split(cfg, tok, split)
    seen, chunk = 0, 8192
    for start in range(0, len(source), chunk):
        lengths = np.fromiter(
            (
                len(r) // dtype.itemsize
                for r in source.__getitems__(list(range(start, min(start + chunk, len(source)))))
            ),
            np.int64,
        )
        reached = np.flatnonzero(np.cumsum(lengths) + seen >= tokens)
        if reached.size:
            return start + int(reached[0]) + 1
        seen += int(lengths.sum())
    return len(source)
