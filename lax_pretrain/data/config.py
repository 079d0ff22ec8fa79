"""The `data` section of a run config: defaults per dataset and the checks that run before anything loads."""

import ml_collections

from lax_pretrain.data import files
from lax_pretrain.data.files import ON_BAD_RECORD
from lax_pretrain.data.shakespeare import parse_works

TEXT_DATASETS = ("shakespeare", "c4", "text_files")
IMAGE_DATASETS = ("fashion_mnist", "imagenet2012")
DATASETS = TEXT_DATASETS + IMAGE_DATASETS
FILE_DATASETS = ("c4", "text_files")  # may be read from text files: streamed, or through a token cache
CROPS = ("random_resized", "pad", "none")
DOCUMENT_FORMATS = ("cola", "window")
AUTO_AUGMENT = ("none", "imagenet")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs

_COMMON = dict(
    data_dir="",  # '' -> $TFDS_DATA_DIR, else ~/tensorflow_datasets
    manual_dir=FASHION_MNIST_DIR,  # only Fashion-MNIST reads it, and only for its first build
    seq_len=256,
    tokenizer="byte",  # 'byte', a SentencePiece .model, or a Hugging Face tokenizer.json (or its directory)
    packing=False,  # C4 only: concatenate documents instead of truncate-or-pad (Shakespeare always packs)
    document_format="window",  # C4 without packing: 'cola' (L tokens ending in EOS) or 'window' (data/text.py)
    # Text corpora as files (data/files.py), tokenized once into a cache (data/cache.py, `lax-data prepare`):
    c4_dir="",  # c4: a local or fsspec copy of the allenai/c4 `en` release (its train/validation shard names)
    train_files="",  # text_files: comma-separated globs of .jsonl/.json.gz/.jsonl.zst/.parquet, local or URLs
    eval_files="",  # text_files: the same for the validation split
    text_key="text",  # the JSON key / Parquet column holding a document's text
    on_bad_record="skip",  # 'skip' (counted, one warning per file) or 'raise' (data/files.py)
    cache_dir="",  # a prepared token cache: training reads its rows (global shuffle, exact resume)
    eval_tokens=0,  # > 0: evaluate on the first rows of the eval split holding this many non-pad tokens
    shuffle_window=10_000,  # streaming from files: documents shuffled in blocks of this many (data/stream.py)
    works="",  # Shakespeare only: 'hamlet,twelfth_night' trains and validates on these works alone (a domain)
    works_train_fraction=0.9,  # with data.works: each work's first fraction of bytes trains, the rest validates
    image_size=224,
    crop="random_resized",
    crop_scale_min=0.08,
    crop_pad=4,  # pixels of zero padding for crop='pad'
    flip=True,
    auto_augment="none",  # 'imagenet': AutoAugment's ImageNet policy after crop and flip (data/autoaugment.py)
    mixup=0.0,  # Beta(alpha, alpha) for mixup; 0 = off
    label_smoothing=0.0,
    eval_crop=1.0,  # eval: central crop of this fraction of the shorter side, resized to image_size
    eval_batches=0,  # global batches per evaluation, streamed afresh each time; 0 = the whole eval split
    worker_count=0,  # grain worker processes; 0 = threads in this process
)

_PER_DATASET = {
    # 8 global batches: 16K of the 505K validation bytes at the quickstart's 16 x 128, 65K at the nano preset's
    # 32 x 256. The quickstart's five evaluations then take 2.3% of its wall time (measured on 2 CPU cores); the
    # whole split (245 batches each) would take ~40%.
    "shakespeare": dict(eval_batches=8),
    # About the papers' ~10M-token validation at their global batch of 512 x 256 tokens.
    "c4": dict(eval_batches=80, document_format="cola"),
    # The whole 10,000-image test split: 28 x 28 images, a fraction of a training run's cost.
    # Any text corpus in files (FineWeb Parquet, SlimPajama .jsonl.zst, ...), the CoLA row format.
    "text_files": dict(eval_batches=80, document_format="cola"),
    "fashion_mnist": dict(image_size=28, crop="pad", eval_batches=0),
    # The LaX ViT recipe (docs/recipes.md), evaluated on the whole 50,000-image validation split as the LaX ViT
    # code does (streamed: host memory holds a few batches, not the split's 28 GiB of float32 pixels).
    "imagenet2012": dict(
        auto_augment="imagenet", mixup=0.2, label_smoothing=0.1, eval_crop=0.9, eval_batches=0
    ),
}


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r} is not a known dataset; choose one of {', '.join(DATASETS)}.")


def default_data_config(name: str = "shakespeare") -> ml_collections.ConfigDict:
    """Every `data.*` key with its default for dataset `name`."""
    check_name(name)
    return ml_collections.ConfigDict(dict(name=name, **{**_COMMON, **_PER_DATASET[name]}))


def resolve(data_cfg) -> ml_collections.ConfigDict:
    """Fills keys the caller left out with the dataset's defaults and rejects typos and bad values."""
    name = data_cfg.get("name", None)
    if name is None:
        raise ValueError(f"data.name is not set; choose one of {', '.join(DATASETS)}.")
    cfg = default_data_config(name)
    unknown = sorted(set(data_cfg.keys()) - set(cfg.keys()))
    if unknown:
        raise ValueError(
            f"unknown data config key(s) {', '.join('data.' + k for k in unknown)}; "
            f"known: {', '.join(sorted(cfg.keys()))}."
        )
    cfg.update(dict(data_cfg))
    _require(
        cfg.document_format in DOCUMENT_FORMATS,
        f"data.document_format={cfg.document_format!r} must be one of {', '.join(DOCUMENT_FORMATS)}",
    )
    _require(cfg.crop in CROPS, f"data.crop={cfg.crop!r} must be one of {', '.join(CROPS)}")
    if cfg.works:
        _require(
            cfg.name == "shakespeare",
            f"data.works={cfg.works!r} selects Shakespeare works; data.name is {cfg.name!r}",
        )
        _require(
            0 < cfg.works_train_fraction < 1,
            f"data.works_train_fraction={cfg.works_train_fraction} must be in (0, 1)",
        )
        parse_works(cfg.works)
    _require(cfg.seq_len > 0, f"data.seq_len={cfg.seq_len} must be positive")
    _require(cfg.image_size > 0, f"data.image_size={cfg.image_size} must be positive")
    _require(0 < cfg.crop_scale_min <= 1, f"data.crop_scale_min={cfg.crop_scale_min} must be in (0, 1]")
    _require(cfg.crop_pad >= 0, f"data.crop_pad={cfg.crop_pad} must be >= 0")
    _require(0 < cfg.eval_crop <= 1, f"data.eval_crop={cfg.eval_crop} must be in (0, 1]")
    _require(
        cfg.auto_augment in AUTO_AUGMENT,
        f"data.auto_augment={cfg.auto_augment!r} must be one of {', '.join(AUTO_AUGMENT)}",
    )
    _require(cfg.mixup >= 0, f"data.mixup={cfg.mixup} must be >= 0 (0 = off)")
    _require(0 <= cfg.label_smoothing < 1, f"data.label_smoothing={cfg.label_smoothing} must be in [0, 1)")
    _require(cfg.eval_batches >= 0, f"data.eval_batches={cfg.eval_batches} must be >= 0 (0 = whole split)")
    _require(cfg.worker_count >= 0, f"data.worker_count={cfg.worker_count} must be >= 0")
    _require(
        cfg.on_bad_record in ON_BAD_RECORD,
        f"data.on_bad_record={cfg.on_bad_record!r} must be one of {', '.join(ON_BAD_RECORD)}",
    )
    _require(cfg.eval_tokens >= 0, f"data.eval_tokens={cfg.eval_tokens} must be >= 0 (0 = data.eval_batches)")
    file_keys = [k for k in ("c4_dir", "train_files", "eval_files", "cache_dir") if cfg[k]]
    _require(
        not file_keys or cfg.name in FILE_DATASETS,
        f"data.{file_keys[0] if file_keys else ''} is for {' or '.join(FILE_DATASETS)}; data.name is {cfg.name!r}",
    )
    _require(
        not (cfg.c4_dir and (cfg.train_files or cfg.eval_files)),
        "data.c4_dir names the allenai/c4 files itself; leave data.train_files/eval_files empty",
    )
    _require(not (cfg.name == "text_files" and cfg.c4_dir), "data.c4_dir is for data.name='c4'")
    _require(
        not cfg.eval_tokens or cfg.cache_dir or streams_files(cfg),
        f"data.eval_tokens={cfg.eval_tokens} counts the rows of a file corpus (data.c4_dir, data.train_files or "
        "data.cache_dir); data.eval_batches sets the others",
    )
    _require(cfg.shuffle_window >= 1, f"data.shuffle_window={cfg.shuffle_window} must be >= 1")
    return cfg


def streams_files(cfg) -> bool:
    """Whether training reads text files directly (data/stream.py): a file corpus without a token cache. C4 with
    neither data.c4_dir nor data.cache_dir is TFDS `c4/en`."""
    return not cfg.cache_dir and (cfg.name == "text_files" or bool(cfg.c4_dir))


def source_files(cfg, split: str) -> list[str]:
    """The files of one split ('train', 'validation') of a file corpus, from data.c4_dir or data.train/eval_files;
    a glob that matches nothing is one error naming the key that gave it."""
    if cfg.c4_dir:
        return files.expand(files.c4_files(cfg.c4_dir, split), key="data.c4_dir")
    key = {"train": "train_files", "validation": "eval_files"}[split]
    return files.expand(cfg[key], key=f"data.{key}")


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"train.batch_size={global_batch_size} must be a positive multiple of the number of "
            f"processes ({process_count}): each process loads an equal slice of every batch."
        )
    return global_batch_size // process_count


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message + ".")
