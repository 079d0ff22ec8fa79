"""The data package: TFDS builders, tokenizers, grain pipelines (determinism, resume, slices), errors."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import lax_pretrain.data as data
from lax_pretrain.data import autoaugment, fashion_mnist, shakespeare, text, tfds_io
from lax_pretrain.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, train_sentencepiece

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the session, with both embedded datasets built once and two tiny stand-ins for
    prepared C4 / ImageNet (same TFDS names and layout, a handful of records)."""
    root = str(tmp_path_factory.mktemp("tfds"))
    for name in ("shakespeare", "fashion_mnist"):
        tfds_io.build_if_needed(cfg(name, root))
    for builder_cls in (_FakeC4, _FakeImagenet):
        builder_cls(data_dir=root, file_format="array_record").download_and_prepare()
    return root


def cfg(name, root, **overrides):
    c = data.default_data_config(name)
    c.data_dir = root
    c.update(overrides)
    return c


class _FakeC4(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "c4"
    VERSION = tfds.core.Version("3.1.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="en")]
    DOCS = {"train": 40, "validation": 13}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "url": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in self.DOCS.items()}

    def _generate_examples(self, split, n):
        for i in range(n):
            # 12 to ~320 characters: some documents pad, others truncate at seq_len=64.
            yield i, {"text": f"{split} doc {i} " + "lorem ipsum é " * (i % 23), "url": f"https://x/{i}"}


class _FakeImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "imagenet2012"
    VERSION = tfds.core.Version("5.1.0")
    IMAGES = {"train": 12, "validation": 5}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=1000),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(n) for split, n in self.IMAGES.items()}

    def _generate_examples(self, n):
        rng = np.random.default_rng(0)
        for i in range(n):
            jpeg = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 60, 3), dtype=np.uint8)).save(
                jpeg, format="JPEG"
            )
            yield i, {"image": jpeg.getvalue(), "label": 100 * (i % 10)}


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def batches_differ(a, b):
    return any(not np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def assert_resumes(make_iterator, k=3, m=3):
    """k batches, save the state (through JSON, as a checkpoint would), m more; a fresh iterator restored from
    the state yields the same m."""
    it = make_iterator()
    take(it, k)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, m)
    restored = make_iterator()
    restored.set_state(state)
    assert_batches_equal(take(restored, m), expected)


def assert_process_slices(make_iterator, global_batch, steps=2):
    """Processes 0 and 1 of 2 load disjoint halves that stack to the single-process global batch."""
    whole = take(make_iterator(global_batch, 0, 1), steps)
    halves = [take(make_iterator(global_batch, p, 2), steps) for p in range(2)]
    for step in range(steps):
        for k in whole[step]:
            assert halves[0][step][k].shape[0] == global_batch // 2
            np.testing.assert_array_equal(
                np.concatenate([h[step][k] for h in halves]), whole[step][k], err_msg=k
            )


# ------------------------------------------------------------------------------------------------ builders


def test_shakespeare_builder_counts(data_dir):
    c = cfg("shakespeare", data_dir)
    total_works = 0
    for split, tfds_split in (("train", "train"), ("eval", "validation")):
        works = tfds_io.open_split(c, split)
        texts = [text.decode_text(w["text"]) for w in works]
        assert len(works) == shakespeare.NUM_WORKS[tfds_split]
        assert sum(len(t.encode("ascii")) for t in texts) == shakespeare.NUM_BYTES[tfds_split]
        total_works += len(works)
    files = shakespeare.work_files()
    assert total_works == len(files) == 42
    assert not any(k.endswith("_gut_f") for k in files)
    old_spelling = [f for f in (shakespeare._texts_dir()).iterdir() if f.name.endswith("_gut_f.txt")]
    assert len(old_spelling) == 35
    all_texts = {text.decode_text(w["text"]) for s in ("train", "eval") for w in tfds_io.open_split(c, s)}
    assert not all_texts & {f.read_text("latin-1") for f in old_spelling}


def test_shakespeare_validation_works_never_in_train(data_dir):
    c = cfg("shakespeare", data_dir)
    train = tfds_io.open_split(c, "train")
    validation = tfds_io.open_split(c, "eval")
    train_titles = {w["title"] for w in train}
    validation_titles = {w["title"] for w in validation}
    assert validation_titles == {b"Hamlet", b"Twelfth Night", b"King Richard II", b"The Rape of Lucrece"}
    assert not train_titles & validation_titles
    train_corpus = "\n".join(text.decode_text(w["text"]) for w in train)
    for work in validation:
        body = text.decode_text(work["text"])
        for start in np.linspace(len(body) // 10, len(body) - 400, 8).astype(int):
            assert body[start : start + 300] not in train_corpus, (work["title"], start)


def test_fashion_mnist_builder_counts(data_dir):
    c = cfg("fashion_mnist", data_dir)
    for split, tfds_split in (("train", "train"), ("eval", "test")):
        records = tfds_io.open_split(c, split)
        assert len(records) == fashion_mnist.NUM_EXAMPLES[tfds_split]
        example = records[0]
        assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
        labels = [r["label"] for r in records.__getitems__(list(range(0, len(records), 25)))]
        assert set(labels) == set(range(10))
    builder = tfds_io.build_if_needed(c)
    assert builder.info.features["label"].names == list(fashion_mnist.CLASS_NAMES)


def test_concurrent_builds_share_one_result(tmp_path):
    script = (
        "import sys; from lax_pretrain.data import tfds_io, default_data_config as d; "
        'c = d("shakespeare"); c.data_dir = sys.argv[1]; print(len(tfds_io.open_split(c, "train")))'
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [o.splitlines()[-1] for o in outputs] == ["38", "38"]
    # One built; the other waited for the lock and reused the result.
    assert sum("downloaded and prepared" in o for o in outputs) == 1
    assert os.listdir(tmp_path / "shakespeare") == [
        str(shakespeare.Shakespeare.VERSION)
    ]  # no incomplete.* dirs


# ---------------------------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize(
    "s", ["", "plain ascii", "Ünïcödé — 日本語 🎉\n\ttabs  and  spaces ", "\x00\x7f\u0300"]
)
def test_byte_tokenizer_round_trips(s):
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert all(3 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == s
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)


def test_train_tokenizer_script_makes_a_round_tripping_model(data_dir, tmp_path):
    out = tmp_path / "sp.model"
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "train_tokenizer.py"),
            "--dataset=shakespeare",
            "--vocab_size=512",
            f"--out={out}",
            f"--data_dir={data_dir}",
        ],
        check=True,
        capture_output=True,
    )
    tok = data.get_tokenizer(cfg("shakespeare", data_dir, tokenizer=str(out)))
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (512, 0, 1, 2)
    for s in [
        "To be, or not to be: that is the question.\n\n  Exeunt.",
        " lead and trail  ",
        "naïve 日本 🎉\t",
    ]:
        assert tok.decode(tok.encode(s)) == s
    # Even 512 pieces (256 of them bytes) compress Shakespeare-like text well below one id per byte.
    sample = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"
    assert len(tok.encode(sample)) < 0.7 * len(sample)
    c = cfg("shakespeare", data_dir, tokenizer=str(out), seq_len=32)
    batch = next(data.make_train_iterator(c, global_batch_size=4, seed=0))
    assert batch["inputs"].max() < 512 and data.dataset_info(c)["vocab_size"] == 512


def test_sentencepiece_training_is_deterministic():
    lines = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"] * 50
    assert train_sentencepiece(lines, vocab_size=300) == train_sentencepiece(lines, vocab_size=300)


# ---------------------------------------------------------------------------------------------------- text


def shakespeare_iterator(data_dir, global_batch=8, process_index=0, process_count=1, seed=0, **overrides):
    return data.make_train_iterator(
        cfg("shakespeare", data_dir, seq_len=64, **overrides),
        global_batch_size=global_batch,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )


def test_text_batches_shapes_and_weights(data_dir):
    batch = next(shakespeare_iterator(data_dir))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "inputs": ((8, 64), np.int32),
        "targets": ((8, 64), np.int32),
        "weights": ((8, 64), np.float32),
    }
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert (batch["weights"] == 1).all()  # packed windows have no padding
    assert data.dataset_info(cfg("shakespeare", data_dir, seq_len=64)) == dict(
        name="shakespeare",
        train_split="train",
        eval_split="validation",
        kind="text",
        seq_len=64,
        vocab_size=259,
        pad_id=0,
        bos_id=1,
        eos_id=2,
    )


def test_text_order_depends_only_on_seed(data_dir):
    a = take(shakespeare_iterator(data_dir, seed=0), 3)
    assert_batches_equal(a, take(shakespeare_iterator(data_dir, seed=0), 3))
    assert batches_differ(a, take(shakespeare_iterator(data_dir, seed=1), 3))


def test_text_iterator_resumes_exactly(data_dir):
    assert_resumes(lambda: shakespeare_iterator(data_dir))


def test_works_select_a_domain_cut_by_bytes(data_dir):
    """data.works: the named works alone; each work's first 90% of bytes trains, the last 10% validates."""
    files = shakespeare.work_files()
    hamlet, sonnets = files["hamlet_gut"].read_text("ascii"), files["sonnets_gut"].read_text("ascii")
    tok = ByteTokenizer()

    def expected_stream(part):
        texts = [
            t[: int(len(t) * 0.9)] if part == "train" else t[int(len(t) * 0.9) :] for t in (hamlet, sonnets)
        ]
        return np.concatenate([np.asarray(tok.encode(t) + [tok.eos_id], np.int32) for t in texts])

    # One validation and one train work, the whole eval part of each.
    c = cfg("shakespeare", data_dir, seq_len=64, works="hamlet, sonnets", eval_batches=0)
    evals = list(data.make_eval_batches(c, global_batch_size=8))
    got = np.concatenate(
        [
            np.concatenate([b["inputs"][i, :1], b["targets"][i]])[: 1 + int(b["weights"][i].sum())]
            for b in evals
            for i in range(8)
            if b["weights"][i].sum() > 0
        ]
    )
    np.testing.assert_array_equal(got, expected_stream("eval"))
    train_stream = expected_stream("train")
    windows = {tuple(train_stream[k * 65 : (k + 1) * 65]) for k in range(len(train_stream) // 65)}
    for batch in take(data.make_train_iterator(c, global_batch_size=8, seed=0), 3):
        rows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
        assert all(tuple(r) in windows for r in rows)
    assert_resumes(lambda: data.make_train_iterator(c, global_batch_size=8, seed=0))


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(works="hamlet,macbeth_2"), "data.works"),
        (dict(works="hamlet", works_train_fraction=1.0), "data.works_train_fraction"),
    ],
)
def test_bad_works(data_dir, overrides, key):
    with pytest.raises(ValueError, match=key):
        data.dataset_info(cfg("shakespeare", data_dir, **overrides))
    with pytest.raises(ValueError, match="data.works='hamlet' selects Shakespeare works"):
        data.dataset_info(cfg("fashion_mnist", data_dir, works="hamlet"))


def test_text_process_slices(data_dir):
    assert_process_slices(lambda g, p, n: shakespeare_iterator(data_dir, g, p, n), global_batch=8)


def test_text_epochs_repeat_with_a_new_shuffle(data_dir):
    c = cfg("shakespeare", data_dir, seq_len=4096)
    n = len(text._packed_windows(c, ByteTokenizer(), "train", keep_tail=False)[0])
    epoch1, epoch2 = take(data.make_train_iterator(c, global_batch_size=n, seed=0), 2)
    rows1, rows2 = (np.concatenate([e["inputs"], e["targets"][:, -1:]], axis=1) for e in (epoch1, epoch2))
    assert not np.array_equal(rows1, rows2)
    np.testing.assert_array_equal(np.unique(rows1, axis=0), np.unique(rows2, axis=0))
    assert len(np.unique(rows1, axis=0)) == n


def test_text_eval_covers_validation_and_pads_with_weight_zero(data_dir):
    c = cfg("shakespeare", data_dir, seq_len=256, eval_batches=0)  # 0: the whole split
    stream = text._work_stream(c, ByteTokenizer(), "eval")
    batches = list(data.make_eval_batches(c, global_batch_size=64))
    windows = -(-len(stream) // 257)
    assert len(batches) == -(-windows // 64)
    # Every token but the first of each window is a weighted target; top-up rows weigh nothing.
    assert sum(b["weights"].sum() for b in batches) == len(stream) - windows
    assert (batches[-1]["weights"][windows % 64 :] == 0).all()
    assert_batches_equal(batches, list(data.make_eval_batches(c, global_batch_size=64)))
    halves = [
        list(data.make_eval_batches(c, global_batch_size=64, process_index=p, process_count=2))
        for p in (0, 1)
    ]
    assert [len(h) for h in halves] == [len(batches)] * 2
    for whole, half0, half1 in zip(batches, *halves):
        np.testing.assert_array_equal(np.concatenate([half0["inputs"], half1["inputs"]]), whole["inputs"])
    limited = list(data.make_eval_batches(cfg("shakespeare", data_dir, eval_batches=2), global_batch_size=64))
    assert_batches_equal(limited, batches[:2])


def test_c4_cola_format_matches_numpy(data_dir):
    """The CoLA/GaLore rows: each document truncated to L tokens with EOS last, padded, pads masked; the model
    reads L tokens and predicts the L-1 next ones (Hugging Face's shifted labels)."""
    L = 64
    c = cfg("c4", data_dir, seq_len=L)
    assert c.document_format == "cola"  # the c4 default
    tok = data.get_tokenizer(c)
    source = tfds_io.open_split(c, "eval")
    rows_in, rows_tgt, rows_w = [], [], []
    for i in range(len(source)):
        ids = tok.encode(text.decode_text(source[i]["text"])) + [tok.eos_id]
        if len(ids) > L:
            ids = ids[: L - 1] + [tok.eos_id]
        padded = np.full(L + 1, tok.pad_id, np.int32)
        padded[: len(ids)] = ids
        rows_in.append(padded[:L])
        rows_tgt.append(padded[1:])
        rows_w.append((np.arange(L) < len(ids) - 1).astype(np.float32))
    batches = list(data.make_eval_batches(c, global_batch_size=len(source)))
    got = {
        k: np.concatenate([b[k] for b in batches])[: len(source)] for k in ("inputs", "targets", "weights")
    }
    np.testing.assert_array_equal(got["inputs"], np.stack(rows_in))
    np.testing.assert_array_equal(got["targets"], np.stack(rows_tgt))
    np.testing.assert_array_equal(got["weights"], np.stack(rows_w))
    lengths = got["weights"].sum(1)
    assert lengths.min() < L - 1 and lengths.max() == L - 1  # short documents pad, long ones truncate
    long_rows = lengths == L - 1
    assert (got["inputs"][long_rows, -1] == tok.eos_id).all()  # a truncated document still ends in EOS
    assert (got["weights"][:, -1] == 0).all()  # the last position predicts nothing
    with pytest.raises(ValueError, match="data.document_format='packed'"):
        data.dataset_info(cfg("c4", data_dir, document_format="packed"))


def test_c4_truncate_or_pad(data_dir):
    c = cfg("c4", data_dir, seq_len=64, document_format="window")
    tok = data.get_tokenizer(c)
    batch = next(data.make_train_iterator(c, global_batch_size=40, seed=0))
    lengths = batch["weights"].sum(1)
    assert lengths.min() < 63 and lengths.max() == 64  # short documents pad, long ones truncate
    for inputs, targets, weights, n in zip(batch["inputs"], batch["targets"], batch["weights"], lengths):
        n = int(n)
        assert (weights[:n] == 1).all() and (weights[n:] == 0).all()
        if n < 64:
            assert targets[n - 1] == tok.eos_id and (inputs[n + 1 :] == tok.pad_id).all()
    assert_resumes(lambda: data.make_train_iterator(c, global_batch_size=4, seed=3))
    assert_process_slices(
        lambda g, p, n: data.make_train_iterator(
            c, global_batch_size=g, seed=0, process_index=p, process_count=n
        ),
        global_batch=8,
    )
    evals = list(data.make_eval_batches(c, global_batch_size=8))
    assert len(evals) == 2  # 13 validation documents
    assert (evals[-1]["weights"][:5].sum(1) > 0).all() and (evals[-1]["weights"][5:] == 0).all()


def test_c4_packing_resumes_and_fills_windows(data_dir):
    c = cfg("c4", data_dir, seq_len=32, packing=True)
    batch = next(data.make_train_iterator(c, global_batch_size=4, seed=0))
    assert batch["inputs"].shape == (4, 32) and (batch["weights"] == 1).all()
    assert (batch["inputs"] == data.get_tokenizer(c).eos_id).any()  # documents are joined by EOS
    assert_resumes(lambda: data.make_train_iterator(c, global_batch_size=4, seed=0))


# -------------------------------------------------------------------------------------------------- images


def fmnist_iterator(data_dir, global_batch=8, process_index=0, process_count=1, seed=0, **overrides):
    return data.make_train_iterator(
        cfg("fashion_mnist", data_dir, **overrides),
        global_batch_size=global_batch,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )


@pytest.mark.parametrize("crop", ["pad", "random_resized", "none"])
def test_image_batches(data_dir, crop):
    batch = next(fmnist_iterator(data_dir, crop=crop, image_size=32, mixup=0.4, label_smoothing=0.1))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "images": ((8, 32, 32, 1), np.float32),
        "labels": ((8,), np.int32),
        "targets": ((8, 10), np.float32),
        "weights": ((8,), np.float32),
    }
    assert -1 <= batch["images"].min() < batch["images"].max() <= 1
    np.testing.assert_allclose(batch["targets"].sum(1), 1, rtol=1e-6)
    assert (batch["targets"] > 0).all()  # smoothing leaves no class at zero
    # Each mixed pair's targets put the most weight on the two partners' labels.
    for i in range(8):
        assert batch["targets"][i].argmax() in (batch["labels"][i], batch["labels"][i ^ 1])


def test_image_targets_without_mixup_are_smoothed_one_hot(data_dir):
    batch = next(fmnist_iterator(data_dir, label_smoothing=0.1))
    expected = np.full((8, 10), 0.01, np.float32)
    expected[np.arange(8), batch["labels"]] = 0.91
    np.testing.assert_allclose(batch["targets"], expected, rtol=1e-6)


def test_image_order_and_augmentation_depend_only_on_seed(data_dir):
    a = take(fmnist_iterator(data_dir, mixup=0.2, crop="random_resized"), 2)
    assert_batches_equal(a, take(fmnist_iterator(data_dir, mixup=0.2, crop="random_resized"), 2))
    assert batches_differ(a, take(fmnist_iterator(data_dir, seed=1, mixup=0.2, crop="random_resized"), 2))


def test_image_iterator_resumes_exactly(data_dir):
    assert_resumes(lambda: fmnist_iterator(data_dir, mixup=0.2, label_smoothing=0.1))


def test_image_process_slices_including_mixup(data_dir):
    assert_process_slices(
        lambda g, p, n: fmnist_iterator(data_dir, g, p, n, mixup=0.2, label_smoothing=0.1), global_batch=8
    )


def test_image_eval_covers_test_split_with_weight_zero_padding(data_dir):
    batches = list(data.make_eval_batches(cfg("fashion_mnist", data_dir), global_batch_size=512))
    assert len(batches) == 20
    assert sum(b["weights"].sum() for b in batches) == 10_000
    assert (batches[-1]["weights"][10_000 % 512 :] == 0).all()
    np.testing.assert_array_equal(batches[0]["targets"], np.eye(10, dtype=np.float32)[batches[0]["labels"]])
    assert data.dataset_info(cfg("fashion_mnist", data_dir))["image_shape"] == (28, 28, 1)


def test_eval_batches_stream_the_same_batches_every_time(data_dir):
    """The eval split is a re-iterable stream: two passes over one `make_eval_batches` give identical batches,
    and a pass holds a few batches in host memory at a time, never the split (tracemalloc sees numpy's
    allocations). The test itself keeps one digest per batch."""
    batches = data.make_eval_batches(cfg("fashion_mnist", data_dir), global_batch_size=64)

    def one_pass() -> tuple[list[str], int]:
        digests, split_bytes = [], 0
        for batch in batches:
            h = hashlib.sha256()
            for key in sorted(batch):
                h.update(key.encode() + np.ascontiguousarray(batch[key]).tobytes())
            digests.append(h.hexdigest())
            split_bytes += sum(v.nbytes for v in batch.values())
        return digests, split_bytes

    first, split_bytes = one_pass()
    tracemalloc.start()
    try:
        second, _ = one_pass()
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(first) == -(-10_000 // 64) and second == first
    # The split is 10,000 x (28 x 28 + 10 + 2) x 4 bytes = 32 MB, a batch 0.2 MB; measured peak 1.6 MB.
    assert peak_bytes < split_bytes / 8, (peak_bytes, split_bytes)


def test_imagenet_reads_prepared_jpegs(data_dir):
    c = cfg("imagenet2012", data_dir, image_size=24)
    batch = next(data.make_train_iterator(c, global_batch_size=4, seed=0))
    assert batch["images"].shape == (4, 24, 24, 3) and batch["targets"].shape == (4, 1000)
    np.testing.assert_allclose(batch["targets"].sum(1), 1, rtol=1e-5)
    evals = list(data.make_eval_batches(c, global_batch_size=4))
    assert [b["weights"].sum() for b in evals] == [4, 1]
    assert data.dataset_info(c)["num_classes"] == 1000


def test_worker_processes_give_the_same_batches(data_dir):
    expected = take(fmnist_iterator(data_dir, mixup=0.2), 4)
    it = fmnist_iterator(data_dir, mixup=0.2, worker_count=1)
    got = take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    restored = fmnist_iterator(data_dir, mixup=0.2, worker_count=1)
    restored.set_state(state)
    assert_batches_equal(got + take(restored, 2), expected)
    restored.close()


def random_image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_auto_augment_policy_and_magnitudes_are_the_papers():
    assert len(autoaugment.IMAGENET_POLICY) == 25
    assert all(len(sp) == 2 and all(0 <= p <= 1 for _, p, _ in sp) for sp in autoaugment.IMAGENET_POLICY)
    # torchvision's 10-bin ranges: rotate 0..30 deg, shear 0..0.3, enhance 0..0.9, posterize 8..4, solarize 255..0
    assert [autoaugment.magnitude("posterize", k) for k in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert autoaugment.magnitude("rotate", 9) == 30 and autoaugment.magnitude("shear_x", 9) == pytest.approx(
        0.3
    )
    np.testing.assert_allclose([autoaugment.magnitude("solarize", k) for k in (0, 3, 9)], [255, 170, 0])
    assert autoaugment.magnitude("color", 0) == 0 and autoaugment.magnitude("contrast", 8) == pytest.approx(
        0.8
    )


@pytest.mark.parametrize("mode_shape", [(20, 24), (20, 24, 3)])
def test_auto_augment_pixel_ops_match_numpy(mode_shape):
    x = random_image(mode_shape)
    image = Image.fromarray(x)
    run = lambda op, m=0.0: np.asarray(autoaugment.apply_op(image, op, m))  # noqa: E731
    np.testing.assert_array_equal(run("invert"), 255 - x)
    np.testing.assert_array_equal(run("posterize", 5), x & 0b11111000)
    np.testing.assert_array_equal(run("solarize", 170.0), np.where(x >= 170, 255 - x, x))
    y = (x.astype(np.int64) // 2 + 40).astype(
        np.uint8
    )  # a low-contrast image: autocontrast stretches it per channel
    lo, hi = y.min(axis=(0, 1)), y.max(axis=(0, 1))
    stretched = np.asarray(autoaugment.apply_op(Image.fromarray(y), "autocontrast", 0.0)).astype(np.float64)
    np.testing.assert_allclose(stretched, (y - lo) * 255.0 / (hi - lo), atol=1.0)
    for op in ("rotate", "shear_x", "color", "contrast", "sharpness"):  # magnitude 0 (factor 1): identity
        np.testing.assert_array_equal(run(op, 0.0), x, err_msg=op)
    rotated = run("rotate", 30.0)
    assert (rotated[0, 0] == autoaugment.FILL).all()  # corners rotate out and fill with mid-grey
    # shear: output row y reads input row y shifted by m*y (row 0 unchanged)
    sheared = run("shear_x", 0.25)
    np.testing.assert_array_equal(sheared[0], x[0])
    np.testing.assert_array_equal(sheared[8, :-2], x[8, 2:])


def test_auto_augment_is_a_function_of_the_generator():
    x = random_image((32, 32, 3), 1)
    a = [autoaugment.auto_augment(x, np.random.default_rng((0, 0, i))) for i in range(40)]
    b = [autoaugment.auto_augment(x, np.random.default_rng((0, 0, i))) for i in range(40)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert all(u.shape == x.shape and u.dtype == np.uint8 for u in a)
    changed = sum(not np.array_equal(u, x) for u in a)
    assert 20 <= changed < 40  # most sub-policies change the image; some draws fire nothing


def test_auto_augment_in_the_pipeline(data_dir):
    plain = take(fmnist_iterator(data_dir, crop="none", flip=False), 2)
    augmented = take(fmnist_iterator(data_dir, crop="none", flip=False, auto_augment="imagenet"), 2)
    for p, a in zip(plain, augmented):
        np.testing.assert_array_equal(p["labels"], a["labels"])  # same examples, augmented pixels
        assert -1 <= a["images"].min() and a["images"].max() <= 1
    assert batches_differ(plain, augmented)
    assert_resumes(lambda: fmnist_iterator(data_dir, auto_augment="imagenet"))
    assert data.default_data_config("imagenet2012").auto_augment == "imagenet"
    with pytest.raises(ValueError, match=r"data\.auto_augment='randaugment'"):
        data.dataset_info(cfg("fashion_mnist", data_dir, auto_augment="randaugment"))


# -------------------------------------------------------------------------------------------------- errors


def test_unknown_dataset_name():
    with pytest.raises(
        ValueError, match=r"data\.name='mnist'.*shakespeare, c4, text_files, fashion_mnist, imagenet2012"
    ):
        data.default_data_config("mnist")
    c = data.default_data_config("shakespeare")
    c.name = "mnist"
    with pytest.raises(ValueError, match=r"data\.name"):
        data.make_train_iterator(c, global_batch_size=8, seed=0)


def test_unknown_or_bad_keys(data_dir):
    with pytest.raises(ValueError, match=r"data\.mixp"):
        data.dataset_info({"name": "fashion_mnist", "mixp": 0.2})
    with pytest.raises(ValueError, match=r"data\.crop"):
        data.dataset_info(cfg("fashion_mnist", data_dir, crop="center"))


@pytest.mark.parametrize("name,tfds_name", [("c4", "c4/en"), ("imagenet2012", "imagenet2012")])
def test_missing_prepared_dataset(tmp_path, name, tfds_name):
    with pytest.raises(FileNotFoundError) as e:
        data.make_train_iterator(cfg(name, str(tmp_path)), global_batch_size=8, seed=0)
    message = str(e.value)
    for needle in (
        "data.name",
        "data.data_dir",
        f"tfds build {tfds_name} --file_format=array_record",
        str(tmp_path),
    ):
        assert needle in message


def test_missing_fashion_mnist_files(tmp_path):
    c = cfg("fashion_mnist", str(tmp_path / "tfds"), manual_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"data\.manual_dir.*scripts/install_system_data\.sh"):
        data.make_train_iterator(c, global_batch_size=8, seed=0)


def test_missing_tokenizer_file(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.tokenizer.*train_tokenizer\.py"):
        data.get_tokenizer(cfg("shakespeare", data_dir, tokenizer=str(tmp_path / "x.model")))


def test_batch_not_divisible(data_dir):
    with pytest.raises(ValueError, match=r"train\.batch_size=9"):
        shakespeare_iterator(data_dir, global_batch=9, process_count=2)
    with pytest.raises(ValueError, match=r"train\.batch_size=10"):
        data.make_eval_batches(cfg("fashion_mnist", data_dir), global_batch_size=10, process_count=4)
    with pytest.raises(ValueError, match=r"data\.mixup.*even"):
        fmnist_iterator(data_dir, global_batch=6, process_count=2, mixup=0.2)
