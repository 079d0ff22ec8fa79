"""Text corpora as researchers hold them: JSON lines (`.jsonl`, `.json`, `.json.gz`, `.jsonl.zst`, one document per
line) and Parquet files, named by globs, local or by any fsspec URL (gs://, s3:// with gcsfs / s3fs installed;
file://, memory://).

    files = expand("/data/c4/en/c4-train.*-of-01024.json.gz", key="data.train_files")
    for text in read_documents(files[0], text_key="text", on_bad_record="skip", counts=counts): ...

The `allenai/c4` release's `en` layout (1,024 train and 8 validation gzip shards, `c4_files`) lets a user name
only its directory. Damaged data in a corpus of hundreds of GB is the rule, not the exception: a line that is not
JSON, a record without the text key or with non-UTF-8 bytes, an empty document and a file cut short are counted
by kind (`BAD_RECORD_KINDS`) and skipped with one warning per file (`data.on_bad_record='skip'`, the default), or
stop the run naming the file and line ('raise').
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import logging
import zlib
from collections.abc import Iterator

import fsspec

log = logging.getLogger(__name__)

ON_BAD_RECORD = ("skip", "raise")
BAD_RECORD_KINDS = ("not_json", "no_text", "not_utf8", "empty", "truncated_file")
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_BATCH_ROWS = 1024  # rows per Arrow batch: host memory holds one batch of one file at a time


def c4_files(c4_dir: str, split: str) -> str:
    """The glob of one split of the allenai/c4 `en` release under `c4_dir` (c4-train.00000-of-01024.json.gz ...;
    any shard count matches, so a subset written the same way reads too)."""
    return f"{c4_dir.rstrip('/')}/c4-{split}.*-of-*.json.gz"


def expand(patterns: str, *, key: str) -> list[str]:
    """The files the comma-separated globs `patterns` match, sorted, as URLs fsspec opens. A glob that matches
    nothing is a one-line error naming `key`."""
    files: list[str] = []
    for pattern in (p.strip() for p in patterns.split(",")):
        if not pattern:
            continue
        fs, path = fsspec.core.url_to_fs(pattern)
        matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path] * fs.exists(path)
        if not matches:
            raise FileNotFoundError(f"{key}={pattern!r} matches no file")
        files += [fs.unstrip_protocol(m) if "://" in pattern else m for m in matches]
    if not files:
        raise ValueError(f"{key} is empty: name the files (comma-separated globs)")
    return files


def file_size(url: str) -> int:
    fs, path = fsspec.core.url_to_fs(url)
    return int(fs.size(path))


class BadRecord(ValueError):
    """A damaged record under data.on_bad_record='raise' (one line: the file, the line and the kind)."""


def read_documents(
    url: str, *, text_key: str, on_bad_record: str, counts: collections.Counter
) -> Iterator[str]:
    """The documents of one file, in order. Damaged records are counted in `counts` by kind and skipped (one
    warning per file), or raise BadRecord under on_bad_record='raise'."""
    seen = collections.Counter()

    def bad(kind: str, where: str) -> None:
        if on_bad_record == "raise":
            raise BadRecord(f"{url}{where}: {kind.replace('_', ' ')} (data.on_bad_record='raise')")
        seen[kind] += 1

    try:
        if url.endswith(PARQUET_SUFFIXES):
            for i, text in enumerate(_parquet_texts(url, text_key)):
                if text is None:
                    bad("no_text", f" row {i}")
                elif not text.strip():
                    bad("empty", f" row {i}")
                else:
                    yield text
        else:
            for i, line in enumerate(_lines(url)):
                kind, text = _json_text(line, text_key)
                if kind:
                    bad(kind, f":{i + 1}")
                else:
                    yield text
    except (EOFError, zlib.error, gzip.BadGzipFile, *_zstd_errors()) as e:
        # A compressed file cut short or corrupt part-way: what was read stays, the rest is lost.
        if on_bad_record == "raise":
            raise BadRecord(f"{url}: truncated or corrupt ({e}) (data.on_bad_record='raise')") from e
        seen["truncated_file"] += 1
    finally:
        counts.update(seen)
        if seen:
            log.warning(
                "%s: skipped %s", url, ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in seen.items())
            )


def _zstd_errors() -> tuple[type[Exception], ...]:
    try:
        import zstandard
    except ImportError:  # no .zst input can have been opened
        return ()
    return (zstandard.ZstdError,)


def _lines(url: str) -> Iterator[bytes]:
    with fsspec.open(url, "rb", compression="infer") as f:
        for line in io.BufferedReader(f):  # zstandard's reader has no line iteration of its own
            if line.strip():
                yield line


def _json_text(line: bytes, text_key: str) -> tuple[str | None, str]:
    """(bad-record kind or None, the document's text)."""
    try:
        record = json.loads(line)
    except UnicodeDecodeError:
        return "not_utf8", ""
    except json.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return "not_utf8", ""
        return "not_json", ""
    text = record.get(text_key) if isinstance(record, dict) else None
    if not isinstance(text, str):
        return "no_text", ""
    if not text.strip():
        return "empty", ""
    return None, text


def _parquet_texts(url: str, text_key: str) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        parquet = pq.ParquetFile(f)
        if text_key not in parquet.schema_arrow.names:
            raise ValueError(
                f"{url} has no column data.text_key={text_key!r} (columns: {parquet.schema_arrow.names})"
            )
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_key]):
            yield from batch.column(0).to_pylist()
