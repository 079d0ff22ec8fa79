"""Text corpora as files (data/files.py) tokenized once into a token cache (data/cache.py, `lax-data prepare`) and
read by training: C4-layout gzip shards written here from the Shakespeare text, Parquet and .jsonl.zst inputs,
an fsspec URL, every kind of damaged record, the cache's refusals, process slices and exact resume (also on
1 process of a run started on 2), and a short training run that evaluates on a token budget.

Rows are checked against an independent reading of the same files: each document's tokens from the tokenizer,
then EOS, cut as the CoLA/GaLore code cuts them (exact equality).
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from lax_pretrain import data as data_lib
from lax_pretrain import prepare
from lax_pretrain.data import cache, files
from lax_pretrain.data.config import default_data_config
from lax_pretrain.data.tokenizer import load_tokenizer

SEQ = 32
N_TRAIN_SHARDS, N_VAL_SHARDS = 3, 2

BAD_LINES = {
    "not_json": b'{"text": "cut off',
    "no_text": json.dumps({"content": "no text key"}).encode(),
    "not_utf8": b'{"text": "caf\xe9"}',
    "empty": json.dumps({"text": "   "}).encode(),
}


def shakespeare_documents(n: int) -> list[str]:
    """n documents of varied length (2 to ~400 bytes) cut from the embedded corpus's text."""
    from lax_pretrain.data import tfds_io

    config = default_data_config("shakespeare")
    text = " ".join(
        str(w["text"], "utf-8") if isinstance(w["text"], bytes) else w["text"]
        for w in tfds_io.open_split(config, "train")
    )
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(text) - 500, n)
    lengths = rng.integers(2, 400, n)
    return [text[s : s + k].strip() or "x" for s, k in zip(starts, lengths)]


def write_jsonl_gz(path: Path, documents: list[str], extra_lines: list[bytes] = ()) -> None:
    lines = [
        json.dumps({"text": d, "timestamp": "2019-04-25T12:57:54Z", "url": "u"}).encode() for d in documents
    ]
    path.write_bytes(gzip.compress(b"\n".join([*lines, *extra_lines]) + b"\n"))


@pytest.fixture(scope="module")
def corpus(tfds_dir, tmp_path_factory) -> dict:
    """A C4-layout directory: N_TRAIN_SHARDS train and N_VAL_SHARDS validation gzip shards of 60 and 30
    documents."""
    root = tmp_path_factory.mktemp("c4") / "en"
    root.mkdir()
    docs = shakespeare_documents(60 * N_TRAIN_SHARDS + 30 * N_VAL_SHARDS)
    train = [docs[60 * i : 60 * (i + 1)] for i in range(N_TRAIN_SHARDS)]
    val = [docs[60 * N_TRAIN_SHARDS + 30 * i :][:30] for i in range(N_VAL_SHARDS)]
    for i, shard in enumerate(train):  # shard 0 also holds one damaged record of each kind
        bad = list(BAD_LINES.values()) if i == 0 else []
        write_jsonl_gz(root / f"c4-train.{i:05d}-of-{N_TRAIN_SHARDS:05d}.json.gz", shard, bad)
    for i, shard in enumerate(val):
        write_jsonl_gz(root / f"c4-validation.{i:05d}-of-{N_VAL_SHARDS:05d}.json.gz", shard)
    return {"dir": root, "train": train, "validation": val}


def c4_config(corpus_dir: Path, cache_dir: Path | str = "", **extra):
    cfg = default_data_config("c4")
    cfg.update(
        {"c4_dir": str(corpus_dir), "cache_dir": str(cache_dir), "seq_len": SEQ, "tokenizer": "byte", **extra}
    )
    return cfg


def expected_rows(documents: list[str], document_format: str = "cola") -> list[np.ndarray]:
    """Independently of text_rows.py: bytes + 3 (the byte tokenizer), EOS (2), CoLA's cut."""
    rows = []
    for d in documents:
        ids = [b + 3 for b in d.encode()] + [2]
        if document_format == "cola" and len(ids) > SEQ:
            ids = ids[: SEQ - 1] + [2]
        rows.append(np.asarray(ids[: SEQ + 1]))
    return rows


def run_prepare(capsys, config_dir: Path, out: Path, *flags_: str) -> tuple[int, str, str]:
    argv = [
        "prepare",
        "--config=configs/llama.py:nano",
        "--config.data.name=c4",
        f"--out={out}",
        "--workers=2",
    ]
    argv += [f"--config.data.c4_dir={config_dir}", f"--config.data.seq_len={SEQ}", *flags_]
    status = prepare.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c4_byte"
    cfg = c4_config(corpus["dir"], out)
    tok = load_tokenizer("byte")
    settings = prepare._settings(cfg, tok, out)
    for split in cache.SPLITS:
        for i in range(len(settings["sources"][split])):
            cache.write_shard(cfg, tok, settings, split, i)
    return out


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


def cached_rows(cfg, split: str) -> list[np.ndarray]:
    source, dtype, _ = cache.open_split(cfg, load_tokenizer(cfg.tokenizer), split)
    return [np.frombuffer(r, dtype).astype(np.int64) for r in source.__getitems__(list(range(len(source))))]


def test_cache_rows_are_the_documents_rows_in_file_order(corpus, prepared):
    cfg = c4_config(corpus["dir"], prepared)
    for split in cache.SPLITS:
        want = expected_rows([d for shard in corpus[split] for d in shard])
        got = cached_rows(cfg, split)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_training_batches_come_from_the_cache_with_pads_masked(corpus, prepared):
    cfg = c4_config(corpus["dir"], prepared)
    batch = next(data_lib.make_train_iterator(cfg, global_batch_size=8, seed=0))
    all_rows = {tuple(r) for r in expected_rows([d for s in corpus["train"] for d in s])}
    for inputs, targets, weights in zip(batch["inputs"], batch["targets"], batch["weights"]):
        n = int(weights.sum()) + 1  # real tokens in the row
        row = tuple(np.append(inputs, targets[-1])[:n])
        assert row in all_rows
        assert (weights[: n - 1] == 1).all() and (weights[n - 1 :] == 0).all()


def test_two_processes_read_disjoint_halves_and_resume_on_one(corpus, prepared):
    """Process p of 2 gets rows p*4..p*4+3 of each global batch of 8: together exactly one process's batch.
    The state of process 0 after 3 batches, given to a 1-process iterator, continues with the 4th global batch."""
    cfg = c4_config(corpus["dir"], prepared)
    one = data_lib.make_train_iterator(cfg, global_batch_size=8, seed=3)
    halves = [
        data_lib.make_train_iterator(cfg, global_batch_size=8, seed=3, process_index=p, process_count=2)
        for p in range(2)
    ]
    for _ in range(3):
        whole = next(one)
        parts = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole["inputs"])
    state = halves[0].get_state()
    fourth = next(one)
    resumed = data_lib.make_train_iterator(cfg, global_batch_size=8, seed=3)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["inputs"], fourth["inputs"])


def test_eval_tokens_takes_the_first_rows_that_hold_them(corpus, prepared):
    cfg = c4_config(corpus["dir"], prepared, eval_tokens=500)
    lengths = [len(r) for r in expected_rows([d for s in corpus["validation"] for d in s])]
    need = int(np.searchsorted(np.cumsum(lengths), 500) + 1)
    batches = list(data_lib.make_eval_batches(cfg, global_batch_size=4))
    weights = np.concatenate([b["weights"] for b in batches])
    real_rows = int((weights.sum(axis=1) > 0).sum())
    assert real_rows == need and len(batches) == -(-need // 4)
    assert weights.sum() + real_rows >= 500  # each row's tokens: its targets plus the first input


def test_a_cache_made_otherwise_is_refused_naming_the_key(corpus, prepared):
    tok = load_tokenizer("byte")
    for key, value in (
        ("seq_len", 16),
        ("document_format", "window"),
        ("packing", True),
        ("text_key", "body"),
    ):
        with pytest.raises(ValueError, match=rf"data\.{key}="):
            cache.open_split(c4_config(corpus["dir"], prepared, **{key: value}), tok, "train")


def test_prepare_command_resumes_and_refuses_other_settings(corpus, tmp_path, capsys):
    out = tmp_path / "cache"
    status, stdout, err = run_prepare(capsys, corpus["dir"], out)
    assert status == 0, err
    assert f"{N_TRAIN_SHARDS + N_VAL_SHARDS} shards to tokenize" in stdout
    (out / "train" / "00001.json").unlink()  # as if that shard had not finished
    status, stdout, _ = run_prepare(capsys, corpus["dir"], out)
    assert status == 0 and stdout.startswith("1 shards to tokenize")
    status, _, err = run_prepare(capsys, corpus["dir"], out, "--config.data.seq_len=64")
    assert (
        status == 2 and err.startswith("error: ") and "seq_len" in err and len(err.strip().splitlines()) == 1
    )


def test_a_glob_that_matches_nothing_is_one_error_line(tmp_path, capsys):
    status, _, err = run_prepare(capsys, tmp_path / "nowhere", tmp_path / "out")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "matches no file" in err
    assert "data.c4_dir" in err and not (tmp_path / "out").exists()


def test_damaged_records_are_counted_and_skipped(tmp_path, caplog):
    good = ["first document", "second one"]
    path = tmp_path / "bad.json.gz"
    write_jsonl_gz(path, good, list(BAD_LINES.values()))
    counts = collections.Counter()
    with caplog.at_level(logging.WARNING, logger="lax_pretrain"):
        texts = list(files.read_documents(str(path), text_key="text", on_bad_record="skip", counts=counts))
    assert texts == good
    assert dict(counts) == {kind: 1 for kind in BAD_LINES}
    assert len([r for r in caplog.records if str(path) in r.getMessage()]) == 1  # one warning per file
    for kind, line in BAD_LINES.items():
        write_jsonl_gz(path, good, [line])
        with pytest.raises(files.BadRecord, match=rf"{path}:3: {kind.replace('_', ' ')}"):
            list(files.read_documents(str(path), text_key="text", on_bad_record="raise", counts=counts))


def test_a_truncated_gzip_shard_keeps_what_was_read(tmp_path):
    path = tmp_path / "cut.json.gz"
    write_jsonl_gz(path, [f"document {i} " * 20 for i in range(200)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    counts = collections.Counter()
    texts = list(files.read_documents(str(path), text_key="text", on_bad_record="skip", counts=counts))
    assert 0 < len(texts) < 200 and counts == {"truncated_file": 1}
    assert texts == [f"document {i} " * 20 for i in range(len(texts))]  # the lines before the cut, whole


def test_parquet_zst_and_fsspec_urls(tmp_path):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = ["alpha beta", "gamma", "delta epsilon zeta"]
    pq.write_table(pa.table({"text": docs, "id": [1, 2, 3]}), tmp_path / "part-0.parquet")
    lines = b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs)
    (tmp_path / "part-1.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    with fsspec.open("memory://corpus/part-2.jsonl", "wb") as f:
        f.write(lines)
    counts = collections.Counter()
    urls = files.expand(
        f"{tmp_path}/part-*, file://{tmp_path}/part-0.parquet, memory://corpus/*.jsonl", key="k"
    )
    assert len(urls) == 4
    for url in urls:
        assert list(files.read_documents(url, text_key="text", on_bad_record="skip", counts=counts)) == docs
    assert not counts


def test_training_reads_the_cache_and_evaluates_on_a_token_budget(corpus, prepared, tmp_path):
    from lax_pretrain.config import from_compact
    from lax_pretrain.train import train
    from lax_pretrain.train.metrics import read_metrics

    config = from_compact("llama", "nano,kind=cola,lax=kron")
    config.model.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, ffn_dim=64)
    for p in config.model.proj:
        config.model.proj[p].rank = 8
    config.data = c4_config(corpus["dir"], prepared, eval_tokens=400)
    config.train.update(steps=4, batch_size=8, log_every=2, eval_every=4, checkpoint_every=4)
    config.optim.warmup_steps = 1
    config.wandb.mode = "disabled"
    assert train(config, tmp_path / "run")["step"] == 4
    records = read_metrics(tmp_path / "run")
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 4] and all(np.isfinite(r["eval_loss"]) for r in evals)
    first = records[0]  # what the cache holds, damaged records its preparation skipped included
    assert first["data_documents"] == 60 * N_TRAIN_SHARDS
    assert all(first[f"data_bad_{kind}"] == 1 for kind in BAD_LINES)


# ------------------------------------------------------------------------------- streaming from the files


def stream_config(corpus, **extra):
    return c4_config(corpus["dir"], shuffle_window=16, **extra)


def one_epoch_rows(cfg, process_index: int = 0, process_count: int = 1) -> list[tuple]:
    it = iter(_stream(cfg, process_index, process_count))
    rows = []
    while it.epoch == 0:
        rows.append(tuple(next(it)))
    return rows[:-1]  # the last one read is the next epoch's first


def _stream(cfg, process_index, process_count):
    from lax_pretrain.data.stream import DocumentStream

    urls = files.expand(files.c4_files(cfg.c4_dir, "train"), key="data.c4_dir")
    return DocumentStream(
        cfg,
        load_tokenizer(cfg.tokenizer),
        urls,
        seed=5,
        process_index=process_index,
        process_count=process_count,
    )


@pytest.mark.parametrize("process_count", [1, 2, 5])
def test_process_shares_are_disjoint_and_cover_the_corpus(process_count):
    from lax_pretrain.data.stream import process_share

    docs = {f: [f"{f}-{i}" for i in range(7)] for f in ("a", "b", "c")}
    seen = []
    for p in range(process_count):
        for f, stride, offset in process_share(sorted(docs), p, process_count):
            seen += docs[f][offset::stride]
    assert sorted(seen) == sorted(d for v in docs.values() for d in v)


def test_stream_rows_are_the_cache_rows(corpus, prepared):
    """The same documents give the same rows through either path; an epoch shuffles them."""
    stream_rows = one_epoch_rows(stream_config(corpus))
    cached = [tuple(r) for r in cached_rows(c4_config(corpus["dir"], prepared), "train")]
    assert sorted(stream_rows) == sorted(cached) and stream_rows != cached


def test_two_stream_processes_read_disjoint_shares_and_never_run_dry(corpus):
    """3 files over 2 processes: shares of 2 files and 1 file, together one process's epoch; both keep
    yielding batches (the smaller share starts its next epoch sooner)."""
    cfg = stream_config(corpus)
    shares = [one_epoch_rows(cfg, p, 2) for p in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(one_epoch_rows(cfg))
    assert not set(shares[0]) & set(shares[1])
    for p in range(2):
        it = data_lib.make_train_iterator(cfg, global_batch_size=8, seed=0, process_index=p, process_count=2)
        batches = [next(it) for _ in range(40)]  # 160 rows: past the end of either share
        assert all(b["inputs"].shape == (4, SEQ) for b in batches)


@pytest.mark.parametrize("packing", [False, True])
def test_a_resumed_stream_gives_the_same_batches(corpus, packing):
    cfg = stream_config(corpus, packing=packing)
    it = data_lib.make_train_iterator(cfg, global_batch_size=8, seed=1)
    for _ in range(25):  # past the first epoch's end (180 documents)
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    resumed = data_lib.make_train_iterator(cfg, global_batch_size=8, seed=1)
    resumed.set_state(state)
    for a in want:
        np.testing.assert_array_equal(next(resumed)["inputs"], a["inputs"])
    if packing:
        assert all(b["weights"].all() for b in want)  # packed rows are full


def test_the_stream_counts_damaged_records_once_across_a_resume(corpus):
    cfg = stream_config(corpus)
    it = iter(_stream(cfg, 0, 1))
    while it.epoch == 0:
        next(it)
    state = it.get_state()
    assert state["bad_records"] == {kind: 1 for kind in BAD_LINES}
    resumed = iter(_stream(cfg, 0, 1))
    resumed.set_state(state)
    assert resumed.get_state() == state  # the replay does not count them again


def test_a_stream_resumed_on_another_process_count_starts_the_next_epoch():
    saved = data_lib.combine_states([{"epoch": 3, "rows": 10}, {"epoch": 4, "rows": 2}])
    assert data_lib.state_for_process(saved, 1, 2) == {"epoch": 4, "rows": 2}
    assert data_lib.state_for_process(saved, 0, 1) == {"epoch": 5, "rows": 0, "bad_records": {}}
    assert data_lib.combine_states([{"next_index": 7}] * 2) == {"next_index": 7}


def test_training_streams_the_files_and_evaluates_on_a_token_budget(corpus, tmp_path):
    from lax_pretrain.config import from_compact
    from lax_pretrain.train import train
    from lax_pretrain.train.metrics import read_metrics

    config = from_compact("llama", "nano,kind=cola,lax=kron")
    config.model.update(d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, ffn_dim=64)
    for p in config.model.proj:
        config.model.proj[p].rank = 8
    config.data = stream_config(corpus, eval_tokens=400)
    config.train.update(steps=4, batch_size=8, log_every=2, eval_every=2, checkpoint_every=2)
    config.optim.warmup_steps = 1
    config.wandb.mode = "disabled"
    assert train(config, tmp_path / "run")["step"] == 4
    config.train.steps = 6  # resumes from step 4 with the stream's saved state
    assert train(config, tmp_path / "run")["start_step"] == 4
    evals = [r for r in read_metrics(tmp_path / "run") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4, 6]
    assert evals[0]["eval_loss"] > evals[-1]["eval_loss"]


# ------------------------------------------------------------------------------ the T5 tokenizer, end to end


def test_t5_rows_through_cache_and_stream_equal_the_papers_hf_call(corpus, tmp_path):
    """A T5-layout SentencePiece model (pad 0, </s> 1, unk 2, no BOS) trained here, saved by transformers as a
    tokenizer.json: the cache's and the stream's rows are, token for token, what the CoLA/GaLore code's call
    `tok(text, max_length=L, truncation=True, padding="max_length")` gives, pads dropped."""
    import transformers

    from lax_pretrain.data.tokenizer import train_t5_layout_sentencepiece

    docs = [d for shard in corpus["train"] for d in shard]
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "spiece.model").write_bytes(train_t5_layout_sentencepiece(docs, vocab_size=400))
    hf = transformers.T5Tokenizer.from_pretrained(str(tmp_path / "spm"), model_max_length=SEQ, extra_ids=100)
    hf.save_pretrained(str(tmp_path / "hf"))
    encoded = hf(docs, max_length=SEQ, truncation=True, padding="max_length")
    want = [
        tuple(i for i, m in zip(ids, mask) if m)
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])
    ]

    cfg = c4_config(corpus["dir"], tmp_path / "cache", tokenizer=str(tmp_path / "hf"))
    tok = load_tokenizer(cfg.tokenizer)
    assert tok.vocab_size == 400 and tok.eos_id == 1 and tok.pad_id == 0
    settings = prepare._settings(cfg, tok, tmp_path / "cache")
    for i in range(len(settings["sources"]["train"])):
        cache.write_shard(cfg, tok, settings, "train", i)
    assert [tuple(r) for r in cached_rows(cfg, "train")] == want
    stream_cfg = c4_config(corpus["dir"], tokenizer=str(tmp_path / "hf"), shuffle_window=16)
    assert sorted(one_epoch_rows(stream_cfg)) == sorted(want)
