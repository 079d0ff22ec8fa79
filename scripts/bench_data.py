#!/usr/bin/env python
"""Input-pipeline throughput on this machine, and how many host cores keep each paper preset fed.

    python scripts/bench_data.py --out=docs/benchmarks/data [--docs=8000] [--presets=60m,130m,350m]

1. A C4-shaped corpus written here: gzip JSON-lines shards of documents cut from the embedded Shakespeare text
   with C4's mean length (~2.2 KB), and a T5-sized SentencePiece unigram model (32,000 pieces; T5's layout:
   pad 0, eos 1, unk 2) trained on the same text.
2. One process (one core), per path: documents/s and tokens/s of
   - stream: read + parse + tokenize + rows (data/stream.py, what training does without a cache),
   - prepare: the same into cache shards (data/cache.py, `lax-data prepare` with --workers=1),
   - cache: training batches read from the cache (no tokenizing).
3. Per preset, from lax-plan (the train step compiled for 8 devices at the recipe's batch of 512 x 256 tokens,
   its roofline on an H100 with the HBM term hidden: the fastest a step can be) the tokens/s one host of 8 H100s
   consumes, and the cores of this kind that each path needs to keep up.
Writes data.json and data.md under --out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402

from lax_pretrain import data as data_lib  # noqa: E402
from lax_pretrain.data import cache, files, tfds_io  # noqa: E402
from lax_pretrain.data.config import default_data_config  # noqa: E402
from lax_pretrain.data.stream import DocumentStream  # noqa: E402
from lax_pretrain.data.tokenizer import load_tokenizer, train_t5_layout_sentencepiece  # noqa: E402
from lax_pretrain.machine import machine_info  # noqa: E402

SEQ = 256
C4_MEAN_DOC_BYTES = 2200
HOST_ACCELERATORS = 8
REALISTIC_MFU = 0.4  # what a well-tuned run reaches; the roofline column is the bound


def shakespeare_text() -> str:
    config = default_data_config("shakespeare")
    return "\n".join(
        w["text"].decode() if isinstance(w["text"], bytes) else w["text"]
        for w in tfds_io.open_split(config, "train")
    )


def write_corpus(text: str, root: Path, n_docs: int, n_shards: int) -> None:
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(C4_MEAN_DOC_BYTES) - 0.5, 1.0, n_docs), 50, 20_000).astype(int)
    starts = rng.integers(0, len(text) - 20_000, n_docs)
    docs = [text[s : s + k] for s, k in zip(starts, lengths)]
    for i in range(n_shards):
        lines = b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs[i::n_shards])
        split = "train" if i < n_shards - 1 else "validation"
        (root / f"c4-{split}.{i:05d}-of-{n_shards:05d}.json.gz").write_bytes(gzip.compress(lines))


def train_t5_like_model(text: str, path: Path) -> int:
    model = train_t5_layout_sentencepiece(
        text.splitlines(), vocab_size=32000, hard_vocab_limit=False, num_threads=os.cpu_count() or 1
    )
    path.write_bytes(model)
    return spm.SentencePieceProcessor(model_proto=model).vocab_size()


def rate(n_docs: int, n_tokens: int, seconds: float) -> dict:
    return {"documents_per_s": n_docs / seconds, "tokens_per_s": n_tokens / seconds, "seconds": seconds}


def measure(cfg, root: Path) -> dict:
    """The three paths on one process, over the same training documents."""
    tok = load_tokenizer(cfg.tokenizer)
    urls = files.expand(files.c4_files(str(root), "train"), key="data.c4_dir")
    out = {}

    it = iter(DocumentStream(cfg, tok, urls, seed=0, process_index=0, process_count=1))
    began, rows, tokens = time.perf_counter(), 0, 0
    while it.epoch == 0:  # one epoch (+ the next epoch's first row, not counted)
        row = next(it)
        rows, tokens = rows + 1, tokens + len(row)
    out["stream"] = rate(rows - 1, tokens - len(row), time.perf_counter() - began)

    sources = {
        split: files.expand(files.c4_files(str(root), split), key="data.c4_dir") for split in cache.SPLITS
    }
    settings = cache.settings_for(cfg, tok, sources)
    Path(cfg.cache_dir).mkdir(parents=True)
    (Path(cfg.cache_dir) / cache.SETTINGS).write_text(json.dumps(settings))
    began, summaries = time.perf_counter(), []
    for split in cache.SPLITS:
        summaries += [cache.write_shard(cfg, tok, settings, split, i) for i in range(len(sources[split]))]
    out["prepare"] = rate(
        sum(s["documents"] for s in summaries),
        sum(s["tokens"] for s in summaries),
        time.perf_counter() - began,
    )

    train_it = data_lib.make_train_iterator(cfg, global_batch_size=64, seed=0)
    next(train_it)  # start-up (threads, first reads) out of the timing
    began, n_batches = time.perf_counter(), 200
    real_tokens = sum(int(next(train_it)["weights"].sum()) + 64 for _ in range(n_batches))
    out["cache"] = rate(n_batches * 64, real_tokens, time.perf_counter() - began)
    return out


def preset_consumption(presets: list[str]) -> dict:
    """Tokens/s one host of 8 H100s consumes per preset, from lax-plan's roofline (HBM term hidden)."""
    from lax_pretrain import plan as plan_lib
    from lax_pretrain.config import from_compact
    from lax_pretrain.parallel import make_mesh
    from lax_pretrain.train.accelerators import accelerator

    out = {}
    for preset in presets:
        config = from_compact("llama", f"{preset},kind=cola,lax=kron,precision=bf16")
        config.mesh.update(data=1, fsdp=HOST_ACCELERATORS, tensor=1, num_devices=HOST_ACCELERATORS)
        report = plan_lib.plan(config, make_mesh(config.mesh), [accelerator("h100")])
        est = report["accelerators"][0]
        tokens_per_step = report["batch_size"] * report["tokens_per_example"]
        step_s = est["step_s_hbm_hidden"]
        flops_per_device_step = report["flops"]["analytic"]
        out[preset] = {
            "params": report["params"],
            "tokens_per_step": tokens_per_step,
            "roofline_step_s_8xh100": step_s,
            "tokens_per_s_per_host": tokens_per_step / step_s,
            "mfu_at_that_step": est["mfu_hbm_hidden"],
            f"tokens_per_s_per_host_at_{REALISTIC_MFU:.0%}_mfu": tokens_per_step
            * REALISTIC_MFU
            * accelerator("h100").peak_bf16_flops
            / flops_per_device_step,
        }
    return out


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(result, indent=2) + "\n")
    paths = result["paths"]
    mfu_key = f"tokens_per_s_per_host_at_{REALISTIC_MFU:.0%}_mfu"
    lines = [
        "# Input-pipeline throughput",
        "",
        f"Machine: {result['machine']['cpu_model']}, {result['machine']['cpu_count']} cores; one process "
        f"(one core) per path. Command: `{result['command']}`. Corpus: {result['corpus']}.",
        "",
        "| path | documents/s per core | tokens/s per core |",
        "|---|---:|---:|",
        *(
            f"| {name} | {r['documents_per_s']:,.0f} | {r['tokens_per_s']:,.0f} |"
            for name, r in paths.items()
        ),
        "",
        "Cores of this machine one host of 8 H100s needs to keep each preset fed (CoLA + LaX, pure bf16, batch",
        "512 x 256 over fsdp=8). Bound: tokens/s from lax-plan's roofline with the HBM term hidden (the fastest",
        f"step, the most a host can consume); at {REALISTIC_MFU:.0%} MFU: the analytic FLOPs at that utilization.",
        "",
        f"| preset | tokens/s per host (bound) | at {REALISTIC_MFU:.0%} MFU | stream cores (bound / "
        f"{REALISTIC_MFU:.0%}) | cache cores (bound / {REALISTIC_MFU:.0%}) |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['tokens_per_s_per_host']:,.0f} | {r[mfu_key]:,.0f} | "
            f"{r['tokens_per_s_per_host'] / paths['stream']['tokens_per_s']:.1f} / "
            f"{r[mfu_key] / paths['stream']['tokens_per_s']:.1f} | "
            f"{r['tokens_per_s_per_host'] / paths['cache']['tokens_per_s']:.1f} / "
            f"{r[mfu_key] / paths['cache']['tokens_per_s']:.1f} |"
            for name, r in result["presets"].items()
        ),
        "",
    ]
    (out / "data.md").write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--docs", type=int, default=8000)
    p.add_argument("--shards", type=int, default=5, help="the last one is the validation split")
    p.add_argument("--presets", default="60m,130m,350m")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "en"
        root.mkdir()
        text = shakespeare_text()
        write_corpus(text, root, a.docs, a.shards)
        vocab = train_t5_like_model(text, Path(tmp) / "spiece.model")
        cfg = default_data_config("c4")
        cfg.update(
            {
                "c4_dir": str(root),
                "tokenizer": str(Path(tmp) / "spiece.model"),
                "seq_len": SEQ,
                "cache_dir": str(Path(tmp) / "cache"),
            }
        )
        paths = measure(cfg, root)
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(),
        "corpus": f"{a.docs} documents (mean {C4_MEAN_DOC_BYTES} bytes, lognormal), {a.shards} gzip shards; "
        f"SentencePiece unigram, {vocab} pieces; seq_len {SEQ}, CoLA rows",
        "paths": paths,
        "presets": preset_consumption([x for x in a.presets.split(",") if x]),
    }
    write(result, Path(a.out))
    print((Path(a.out) / "data.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
