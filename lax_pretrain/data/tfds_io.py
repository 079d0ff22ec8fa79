"""Where each `data.name` lives on disk and how its splits open as random-access TFDS data sources.

Shakespeare and Fashion-MNIST are built here on first use (array_record, no TensorFlow); C4 and ImageNet must
already be prepared in array_record form under `data.data_dir`.
"""

import contextlib
import fcntl
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import logging

from lax_pretrain.data import fashion_mnist, shakespeare

# data.name -> (TFDS name, train split, eval split)
SPLITS = {
    "shakespeare": ("shakespeare", "train", "validation"),
    "fashion_mnist": ("fashion_mnist", "train", "test"),
    "c4": ("c4/en", "train", "validation"),
    "imagenet2012": ("imagenet2012", "train", "validation"),
}
_BUILDERS = {"shakespeare": shakespeare.Shakespeare, "fashion_mnist": fashion_mnist.FashionMnist}
_HOW_TO_PREPARE = {
    "c4": "C4 is generated from Common Crawl with Apache Beam; see the TFDS catalog page for c4",
    "imagenet2012": "ImageNet needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
    "<data_dir>/downloads/manual first",
}


def data_dir(cfg) -> str:
    return os.path.expanduser(cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def open_split(cfg, split: str) -> Sequence[dict]:
    """The records of `split` ('train' or 'eval') of dataset `cfg.name` as a random-access sequence of dicts."""
    tfds_name, train_split, eval_split = SPLITS[cfg.name]
    split_name = train_split if split == "train" else eval_split
    if cfg.name in _BUILDERS:
        builder = build_if_needed(cfg)
    else:
        builder = _prepared_builder(cfg, tfds_name)
    return builder.as_data_source(split_name)


def ensure_available(cfg) -> None:
    """Builds an embedded dataset, or checks that a real one is prepared: the clear error comes before any
    model is compiled."""
    if cfg.name in _BUILDERS:
        build_if_needed(cfg)
    else:
        _prepared_builder(cfg, SPLITS[cfg.name][0])


def build_if_needed(cfg) -> tfds.core.DatasetBuilder:
    """Builds an embedded dataset once per data dir; concurrent callers wait for the first instead of racing."""
    root = data_dir(cfg)
    builder_cls = _BUILDERS[cfg.name]
    builder = builder_cls(data_dir=root, file_format="array_record")
    if builder.is_prepared():
        return builder
    os.makedirs(root, exist_ok=True)
    with _file_lock(os.path.join(root, f".{cfg.name}.lock")):
        # Another process may have finished the build while we waited for the lock.
        builder = builder_cls(data_dir=root, file_format="array_record")
        if not builder.is_prepared():
            if cfg.name == "fashion_mnist":
                fashion_mnist.check_manual_dir(cfg.manual_dir)
            logging.info("Building %s into %s (first use; a few seconds).", cfg.name, root)
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=cfg.manual_dir)
            )
    # A fresh builder reads the split sizes from disk; the one that built (or waited) still has none.
    return builder_cls(data_dir=root)


def _prepared_builder(cfg, tfds_name: str) -> tfds.core.DatasetBuilder:
    """Opens the newest prepared version of `tfds_name` without importing its TensorFlow-bound builder."""
    root = data_dir(cfg)
    variants = os.path.join(root, *tfds_name.split("/"))
    versions = [
        v
        for v in (os.listdir(variants) if os.path.isdir(variants) else [])
        if tfds.core.Version.is_valid(v) and os.path.isfile(os.path.join(variants, v, "dataset_info.json"))
    ]
    how_to = (
        f"Prepare it once on a machine with TensorFlow: `tfds build {tfds_name} "
        f"--file_format=array_record --data_dir={root}` ({_HOW_TO_PREPARE[cfg.name]}), or point "
        f"data.data_dir at the directory that holds {tfds_name}/<version>/."
    )
    if not versions:
        raise FileNotFoundError(
            f"data.name={cfg.name!r}: no prepared TFDS dataset {tfds_name!r} under "
            f"data.data_dir={root!r}. {how_to}"
        )
    newest = max(versions, key=tfds.core.Version)
    builder = tfds.builder_from_directory(os.path.join(variants, newest))
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise FileNotFoundError(
            f"data.name={cfg.name!r}: {tfds_name} {newest} under data.data_dir={root!r} is "
            f"stored as {builder.info.file_format.value}, but grain reads array_record only. "
            f"{how_to}"
        )
    return builder


@contextlib.contextmanager
def _file_lock(path: str):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
