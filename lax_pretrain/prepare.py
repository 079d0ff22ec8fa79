"""Tokenize a text corpus once into a token cache that training reads (data/cache.py).

lax-data prepare --config=configs/llama.py:60m,kind=cola,lax=kron --config.data.c4_dir=/data/c4/en \
    --config.data.tokenizer=/models/t5-base/tokenizer.json --out=/data/c4_en_t5_256 [--workers=N] \
    [--shard_index=I --num_shards=N] [--splits=train,validation]
lax-train --config=configs/llama.py:60m,kind=cola,lax=kron --config.data.cache_dir=/data/c4_en_t5_256 ...

The cache depends on data.tokenizer, data.seq_len, data.document_format, data.packing and data.text_key (the
run's config gives them; a run asking for others is refused). One output shard per source file, written by
`--workers` processes (default: every core); finished shards are kept, so running the command again resumes.
Hosts share the work with --shard_index/--num_shards (each takes every num_shards-th file of each split) into
one --out that all of them see. Damaged records are skipped and counted (data.on_bad_record).
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from lax_pretrain import cli
from lax_pretrain.data import cache
from lax_pretrain.data import config as data_config
from lax_pretrain.data.tokenizer import load_tokenizer

FLAGS = cli.new_flags()
config_flags.DEFINE_config_file(
    "config",
    None,
    "Recipe file and compact argument; its data section says what to prepare.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "out", None, "The cache directory (later data.cache_dir); local or shared.", flag_values=FLAGS
)
flags.DEFINE_list("splits", list(cache.SPLITS), "Which splits to prepare.", flag_values=FLAGS)
flags.DEFINE_integer("workers", 0, "Tokenizing processes (0: one per core).", flag_values=FLAGS)
flags.DEFINE_integer(
    "shard_index", 0, "This host's share of the files (0 .. num_shards-1).", flag_values=FLAGS
)
flags.DEFINE_integer("num_shards", 1, "How many hosts share the work.", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "out"], flag_values=FLAGS)


def _resolved(fv: flags.FlagValues):
    cfg = data_config.resolve(fv.config.data)
    if cfg.name not in data_config.FILE_DATASETS:
        raise ValueError(
            f"data.name={cfg.name!r}: lax-data prepares text files ({' or '.join(data_config.FILE_DATASETS)}: "
            "data.c4_dir, or data.train_files/eval_files)"
        )
    unknown = sorted(set(fv.splits) - set(cache.SPLITS))
    if unknown:
        raise ValueError(f"--splits: {unknown[0]!r} is not one of {', '.join(cache.SPLITS)}")
    if not 0 <= fv.shard_index < fv.num_shards:
        raise ValueError(f"--shard_index={fv.shard_index} must be in [0, --num_shards={fv.num_shards})")
    cfg.cache_dir = fv.out
    return cfg


def _settings(cfg, tok, out: Path) -> dict:
    """The cache's settings: written by the first host, checked by every later run of the command."""
    sources = {split: data_config.source_files(cfg, split) for split in cache.SPLITS}
    settings = cache.settings_for(cfg, tok, sources)
    path = out / cache.SETTINGS
    if path.exists():
        held = json.loads(path.read_text())
        for k in ("tokenizer_fingerprint", *cache.ROW_KEYS, "sources"):
            if held.get(k) != settings[k]:
                raise ValueError(
                    f"--out={out} holds a cache prepared with other {k} ({held.get(k)!r:.80}); use another --out"
                )
        return held
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=1) + "\n")
    os.replace(tmp, path)
    return settings


def _work(task: tuple) -> dict:
    cfg_dict, settings, split, index = task
    cfg = data_config.resolve(cfg_dict)
    return cache.write_shard(cfg, load_tokenizer(cfg.tokenizer), settings, split, index)


def _run(fv: flags.FlagValues) -> None:
    cfg = _resolved(fv)
    tok = load_tokenizer(cfg.tokenizer)
    out = Path(fv.out)
    settings = _settings(cfg, tok, out)
    mine = [
        (split, i)
        for split in fv.splits
        for i in range(len(settings["sources"][split]))
        if i % fv.num_shards == fv.shard_index
    ]
    tasks = [
        (cfg.to_dict(), settings, split, i) for split, i in mine if cache.finished(out, split, i) is None
    ]
    print(f"{len(tasks)} shards to tokenize into {out} ({len(mine) - len(tasks)} already prepared)")
    totals = collections.Counter()
    workers = min(fv.workers or os.cpu_count() or 1, max(len(tasks), 1))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        bar = tqdm(pool.imap_unordered(_work, tasks), total=len(tasks), unit="shard", dynamic_ncols=True)
        for summary in bar:
            totals.update({k: summary[k] for k in ("documents", "rows", "tokens")})
            totals.update({f"bad {k}": v for k, v in summary["bad_records"].items()})
            bar.set_postfix(docs=totals["documents"], tokens=totals["tokens"])
    print(
        "prepared " + ", ".join(f"{v} {k}" for k, v in totals.items())
        if totals
        else "nothing left to prepare"
    )


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda fv, command: _run(fv), FLAGS, argv, commands=("prepare",))


if __name__ == "__main__":
    sys.exit(main())
