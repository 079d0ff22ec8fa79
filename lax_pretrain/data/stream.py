"""Training straight from text files, tokenized on the fly: no preparation step (`data.c4_dir` or
`data.train_files` without `data.cache_dir`).

Each process reads a disjoint share of the files (`process_share`): with at least as many files as processes,
process p takes files p, p + P, ...; with fewer, the processes that share a file take every k-th of its documents.
An epoch is this process's units (file, stride, offset) in an order drawn from (seed, epoch, process), their
documents in file order, shuffled in blocks of `data.shuffle_window` documents (host memory holds one block: at
C4's ~2.3 KB per document, 10,000 documents are ~23 MB, plus one Parquet batch), then cut into rows
(text_rows.py) exactly as the cache cuts them. The stream never ends: every process starts its next epoch when
its share runs out, so no host runs dry before the others.

The iterator's state is (epoch, rows emitted in the epoch, the damaged records skipped so far); restoring
re-reads the epoch up to there (skipping documents without tokenizing them, except when packing). Each process
has its own state: the training loop checkpoints all of them. Resuming on the same number of processes
continues with exactly the rows that would have come; on another number, each process starts the epoch after
the newest saved one (its share of the files changed, so the old positions mean nothing): documents of the
interrupted epoch may be seen twice or not at all. For exact resumes across process counts, use a cache.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from lax_pretrain.data import files as files_lib
from lax_pretrain.data.text_rows import document_rows, packed_rows
from lax_pretrain.data.tokenizer import Tokenizer


def process_share(files: list[str], process_index: int, process_count: int) -> list[tuple[str, int, int]]:
    """This process's (file, stride, offset) units: every document of the corpus in exactly one process."""
    if len(files) >= process_count:
        return [(f, 1, 0) for f in files[process_index::process_count]]
    f = process_index % len(files)
    sharers = list(range(f, process_count, len(files)))
    return [(files[f], len(sharers), sharers.index(process_index))]


class DocumentStream(grain.IterDataset):
    """Endless rows (int32 token ids, at most seq_len + 1) of this process's share of `files`."""

    def __init__(
        self, cfg: Any, tok: Tokenizer, files: list[str], *, seed: int, process_index: int, process_count: int
    ):
        super().__init__()
        self.cfg, self.tok, self.seed = cfg, tok, seed
        self.process_index = process_index
        self.units = process_share(files, process_index, process_count)

    def __iter__(self) -> _StreamIterator:
        return _StreamIterator(self)

    def documents(self, epoch: int, bad_records: collections.Counter) -> Iterator[str]:
        rng = np.random.default_rng((self.seed, epoch, self.process_index))
        for u in rng.permutation(len(self.units)):
            url, stride, offset = self.units[u]
            texts = files_lib.read_documents(
                url, text_key=self.cfg.text_key, on_bad_record=self.cfg.on_bad_record, counts=bad_records
            )
            yield from itertools.islice(texts, offset, None, stride)

    def shuffled(self, epoch: int, bad_records: collections.Counter) -> Iterator[str]:
        docs = self.documents(epoch, bad_records)
        for block in itertools.count():
            window = list(itertools.islice(docs, self.cfg.shuffle_window))
            if not window:
                return
            order = np.random.default_rng((self.seed, epoch, self.process_index, block)).permutation(
                len(window)
            )
            yield from (window[i] for i in order)


class _StreamIterator(grain.DatasetIterator):
    def __init__(self, stream: DocumentStream):
        super().__init__()
        self.stream = stream
        self.bad_records: collections.Counter = collections.Counter()  # this process's, since the run began
        self._start(epoch=0, rows=0)

    def _start(self, *, epoch: int, rows: int, bad_records: dict | None = None) -> None:
        """Positions the stream `rows` rows into `epoch`; `bad_records`: the counts as of that position."""
        self.epoch, self.rows = epoch, rows
        cfg, tok = self.stream.cfg, self.stream.tok
        docs = self.stream.shuffled(epoch, self.bad_records)
        if cfg.packing:
            self._rows = packed_rows(docs, tok, cfg.seq_len, cfg.document_format)
            for _ in range(rows):  # a packed row spans documents: only tokenizing finds the boundaries
                next(self._rows, None)
        else:
            for _ in range(rows):  # one row per document: skipped without tokenizing
                next(docs, None)
            self._rows = document_rows(docs, tok, cfg.seq_len, cfg.document_format)
        if bad_records is not None:  # the replay above counted the skipped records again
            self.bad_records.clear()
            self.bad_records.update(bad_records)

    def __next__(self) -> np.ndarray:
        for _ in range(2):  # an epoch that yields nothing (every record damaged) must not loop forever
            row = next(self._rows, None)
            if row is not None:
                self.rows += 1
                return row
            self._start(epoch=self.epoch + 1, rows=0)
        raise ValueError("the training files hold no usable document (data.train_files / data.c4_dir)")

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "rows": self.rows, "bad_records": dict(self.bad_records)}

    def set_state(self, state: dict) -> None:
        self._start(
            epoch=int(state["epoch"]), rows=int(state["rows"]), bad_records=state.get("bad_records", {})
        )


def state_after_process_change(saved_states: list[dict]) -> dict:
    """A stream saved by another number of processes: the epoch after the newest saved one, from its start."""
    return {"epoch": 1 + max(int(s["epoch"]) for s in saved_states), "rows": 0, "bad_records": {}}
