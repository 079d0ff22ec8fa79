"""Data for lax-pretrain: TFDS datasets read through grain into numpy batches, one slice per process.

    it = make_train_iterator(config.data, global_batch_size=512, seed=0,
                             process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)                    # dict of numpy arrays, this process's rows of the global batch
    state = it.get_state()              # JSON-serializable; it.set_state(state) resumes exactly
    for batch in make_eval_batches(config.data, global_batch_size=512): ...   # afresh on every loop

`data.name` picks the dataset: 'shakespeare' and 'fashion_mnist' are built offline on first use into
`data.data_dir`; 'c4' and 'imagenet2012' must be prepared there (array_record). See config.py for every key.
"""

import collections

import grain

from lax_pretrain.data import cache, config, images, stream, text, tfds_io
from lax_pretrain.data.config import default_data_config
from lax_pretrain.data.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "Tokenizer",
    "dataset_info",
    "ensure_available",
    "default_data_config",
    "get_tokenizer",
    "make_eval_batches",
    "make_train_iterator",
]


def make_train_iterator(
    data_cfg, *, global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """An endless iterator over this process's slice of the training batches (a new shuffle every epoch).

    The same (data_cfg, global_batch_size, seed) gives the same batches; `get_state()` / `set_state(state)` on a
    fresh iterator (same config and `data.worker_count`) continue with exactly the batches that would have come.
    """
    cfg = config.resolve(data_cfg)
    local_batch = config.local_batch_size(global_batch_size, process_count)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed} must be in [0, 2**32).")
    args = dict(local_batch=local_batch, seed=seed, process_index=process_index, process_count=process_count)
    if cfg.name in config.TEXT_DATASETS:
        ds = text.train_dataset(cfg, load_tokenizer(cfg.tokenizer), **args)
    else:
        ds = images.train_dataset(cfg, **args)
    return iter(ds)


def make_eval_batches(
    data_cfg, *, global_batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """This process's slices of the fixed evaluation batches, in order: a re-iterable stream.

    The first `data.eval_batches` global batches of the eval split (0: all of it); the last one is topped up
    with rows of weight 0, so every process gets the same number of full batches. Each `iter()` reads the same
    batches afresh with a few of them in flight (pipeline.READ_OPTIONS), so an evaluation of the whole
    ImageNet validation split holds a few batches in host memory, not the split.
    """
    cfg = config.resolve(data_cfg)
    local_batch = config.local_batch_size(global_batch_size, process_count)
    args = dict(
        global_batch=global_batch_size,
        local_batch=local_batch,
        process_index=process_index,
        process_count=process_count,
    )
    if cfg.name in config.TEXT_DATASETS:
        return text.eval_dataset(cfg, load_tokenizer(cfg.tokenizer), **args)
    return images.eval_dataset(cfg, **args)


def combine_states(states: list[dict]) -> dict:
    """The iterator states of all processes as one checkpointable dict: one state when they agree (a
    random-access source's position is global), else each process's own (a stream of files)."""
    if all(s == states[0] for s in states):
        return states[0]
    return {"per_process": states}


def state_for_process(saved: dict, process_index: int, process_count: int) -> dict:
    """This process's iterator state from `combine_states`' output, on the same or another number of processes."""
    if "per_process" not in saved:
        return saved
    if len(saved["per_process"]) == process_count:
        return saved["per_process"][process_index]
    return stream.state_after_process_change(saved["per_process"])


def skipped_records(per_process: list[dict]) -> dict[str, int]:
    """Metrics of the damaged records a stream of files skipped, summed over processes: `data_bad_<kind>`."""
    total = collections.Counter()
    for counts in per_process:
        total.update(counts)
    return {f"data_bad_{kind}": n for kind, n in sorted(total.items())}


def corpus_counts(data_cfg) -> dict[str, int]:
    """What a token cache's training split holds (`data_documents`, `data_rows`, `data_tokens`, and the damaged
    records its preparation skipped, `data_bad_<kind>`); {} for other sources."""
    cfg = config.resolve(data_cfg)
    if not cfg.cache_dir:
        return {}
    _, _, totals = cache.open_split(cfg, load_tokenizer(cfg.tokenizer), "train")
    return {f"data_{k}": v for k, v in sorted(totals.items())}


def ensure_available(data_cfg) -> None:
    """Builds the embedded datasets on first use; a real dataset that is not prepared is a clear error, and so
    is a token cache made with other settings or not finished."""
    cfg = config.resolve(data_cfg)
    if cfg.cache_dir:
        for split in cache.SPLITS:
            cache.open_split(cfg, load_tokenizer(cfg.tokenizer), split)
    elif config.streams_files(cfg):
        for split in cache.SPLITS:
            config.source_files(cfg, split)
    else:
        tfds_io.ensure_available(cfg)


def get_tokenizer(data_cfg) -> Tokenizer:
    return load_tokenizer(config.resolve(data_cfg).tokenizer)


def dataset_info(data_cfg) -> dict:
    """What a model needs to know about the data, without reading any of it."""
    cfg = config.resolve(data_cfg)
    train_split, eval_split = tfds_io.SPLITS.get(cfg.name, (None, "train", "validation"))[1:]
    info = dict(name=cfg.name, train_split=train_split, eval_split=eval_split)
    if cfg.name in config.TEXT_DATASETS:
        tok = load_tokenizer(cfg.tokenizer)
        return dict(
            info,
            kind="text",
            seq_len=cfg.seq_len,
            vocab_size=tok.vocab_size,
            pad_id=tok.pad_id,
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
        )
    return dict(
        info, kind="image", num_classes=images.NUM_CLASSES[cfg.name], image_shape=images.image_shape(cfg)
    )
