"""Image pipelines -> {'images': float32[B, S, S, C] in [-1, 1] (mean = std = 0.5, as in the LaX recipe),
'labels': int32[B], 'targets': float32[B, K] (soft labels), 'weights': float32[B] (0 on eval top-up rows)}.

Train: random-resized-crop (scale [data.crop_scale_min, 1], aspect [3/4, 4/3]) or zero-pad-and-crop or a
plain resize, then a horizontal flip, then AutoAugment (data.auto_augment, `autoaugment.py`), each drawn from
(seed, position in the global stream), so an example's augmentation does not depend on the process count or a
resume. Targets are one-hot, smoothed by data.label_smoothing, then mixed by mixup.

Mixup pairs neighbouring rows (2j, 2j+1) and draws one Beta(alpha, alpha) weight per pair from
(seed, global pair index), like timm's 'pair' mode rather than one weight per batch: a pair never straddles
two processes, so the mixed batch is the same however it is split (the local batch must be even).

Eval: the central square of data.eval_crop x the shorter side, resized to data.image_size; one-hot targets.
"""

import functools

import grain
import numpy as np
from PIL import Image

from lax_pretrain.data import pipeline, tfds_io
from lax_pretrain.data.autoaugment import auto_augment

NUM_CLASSES = {"fashion_mnist": 10, "imagenet2012": 1000}
CHANNELS = {"fashion_mnist": 1, "imagenet2012": 3}
_AUGMENT, _MIXUP = 0, 1  # random streams drawn from the same seed


def image_shape(cfg) -> tuple[int, int, int]:
    return (cfg.image_size, cfg.image_size, CHANNELS[cfg.name])


def train_dataset(
    cfg, *, local_batch: int, seed: int, process_index: int, process_count: int
) -> grain.IterDataset:
    if cfg.mixup and local_batch % 2:
        raise ValueError(
            f"data.mixup={cfg.mixup} mixes pairs of neighbouring examples, so the per-process batch "
            f"(train.batch_size / processes = {local_batch}) must be even."
        )
    source = tfds_io.open_split(cfg, "train")
    rows = pipeline.train_rows(
        len(source),
        local_batch=local_batch,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    read = functools.partial(
        _train_batch,
        source=source,
        seed=seed,
        size=cfg.image_size,
        crop=cfg.crop,
        scale_min=cfg.crop_scale_min,
        pad=cfg.crop_pad,
        flip=cfg.flip,
        policy=cfg.auto_augment,
        num_classes=NUM_CLASSES[cfg.name],
        label_smoothing=cfg.label_smoothing,
        mixup=cfg.mixup,
    )
    return pipeline.to_iter(rows.map(read), cfg.worker_count)


def eval_dataset(
    cfg, *, global_batch: int, local_batch: int, process_index: int, process_count: int
) -> grain.IterDataset:
    source = tfds_io.open_split(cfg, "eval")
    rows = pipeline.eval_rows(
        len(source),
        global_batch=global_batch,
        eval_batches=cfg.eval_batches,
        local_batch=local_batch,
        process_index=process_index,
        process_count=process_count,
    )
    read = functools.partial(
        _eval_batch,
        source=source,
        shape=image_shape(cfg),
        eval_crop=cfg.eval_crop,
        num_classes=NUM_CLASSES[cfg.name],
    )
    return pipeline.to_iter(rows.map(read), cfg.worker_count)


def _train_batch(
    rows: dict, *, source, seed, size, crop, scale_min, pad, flip, policy, num_classes, label_smoothing, mixup
) -> dict:
    crops, labels_B = [], []
    for record, position in zip(pipeline.read(source, rows["index"]), rows["position"]):
        crops.append(
            _augment(
                record["image"],
                pipeline.rng(seed, _AUGMENT, position),
                size=size,
                crop=crop,
                scale_min=scale_min,
                pad=pad,
                flip=flip,
                policy=policy,
            )
        )
        labels_B.append(record["label"])
    images = _normalize(np.stack(crops))
    labels_B = np.asarray(labels_B, np.int32)
    targets_BxK = _one_hot(labels_B, num_classes, label_smoothing)
    if mixup:
        images, targets_BxK = _mixup(images, targets_BxK, rows["position"], alpha=mixup, seed=seed)
    return {
        "images": images,
        "labels": labels_B,
        "targets": targets_BxK,
        "weights": np.ones(len(labels_B), np.float32),
    }


def _eval_batch(rows: dict, *, source, shape, eval_crop, num_classes) -> dict:
    records = pipeline.read(source, rows["index"])
    x_BxSxSxC = np.zeros((len(records), *shape), np.uint8)
    labels_B = np.zeros(len(records), np.int32)
    for i, record in enumerate(records):
        if record is not None:
            x_HxWxC = record["image"]
            h, w = x_HxWxC.shape[:2]
            side = eval_crop * min(h, w)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            x_BxSxSxC[i] = _resize(x_HxWxC, shape[0], box)
            labels_B[i] = record["label"]
    weights_B = np.array([r is not None for r in records], np.float32)
    return {
        "images": _normalize(x_BxSxSxC),
        "labels": labels_B,
        "targets": _one_hot(labels_B, num_classes, 0.0),
        "weights": weights_B,
    }


def _augment(
    x_HxWxC: np.ndarray, rng: np.random.Generator, *, size, crop, scale_min, pad, flip, policy
) -> np.ndarray:
    if crop == "random_resized":
        x_SxSxC = _resize(x_HxWxC, size, _random_resized_box(rng, *x_HxWxC.shape[:2], scale_min))
    elif crop == "pad":
        x_PxPxC = np.pad(_resize(x_HxWxC, size), ((pad, pad), (pad, pad), (0, 0)))
        top, left = rng.integers(0, 2 * pad + 1, size=2)
        x_SxSxC = x_PxPxC[top : top + size, left : left + size]
    else:
        x_SxSxC = _resize(x_HxWxC, size)
    if flip and rng.random() < 0.5:
        x_SxSxC = x_SxSxC[:, ::-1]
    if policy != "none":
        x_SxSxC = auto_augment(np.ascontiguousarray(x_SxSxC), rng, policy)
    return x_SxSxC


def _normalize(x_uint8: np.ndarray) -> np.ndarray:
    return x_uint8.astype(np.float32) / 127.5 - 1.0  # (x / 255 - 0.5) / 0.5


def _resize(x_HxWxC: np.ndarray, size: int, box=None) -> np.ndarray:
    """Crops `box` (x0, y0, x1, y1 in pixels, fractional allowed) and resizes it to size x size, bicubic."""
    h, w, c = x_HxWxC.shape
    if (h, w) == (size, size) and box in (None, (0, 0, w, h)):
        return x_HxWxC
    image = Image.fromarray(x_HxWxC[:, :, 0] if c == 1 else x_HxWxC)
    return np.asarray(image.resize((size, size), Image.BICUBIC, box=box)).reshape(size, size, c)


def _random_resized_box(rng: np.random.Generator, h: int, w: int, scale_min: float):
    """torchvision's RandomResizedCrop: area fraction in [scale_min, 1], log-uniform aspect in [3/4, 4/3];
    after 10 misses, the central square."""
    for _ in range(10):
        area = h * w * rng.uniform(scale_min, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            return (x0, y0, x0 + cw, y0 + ch)
    side = min(h, w)
    return ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)


def _one_hot(labels_B: np.ndarray, num_classes: int, label_smoothing: float) -> np.ndarray:
    targets_BxK = np.full((len(labels_B), num_classes), label_smoothing / num_classes, np.float32)
    targets_BxK[np.arange(len(labels_B)), labels_B] += 1.0 - label_smoothing
    return targets_BxK


def _mixup(x_BxSxSxC, targets_BxK, position_B, *, alpha: float, seed: int):
    # Rows come in pairs (2j, 2j+1) at even global positions; each pair mixes with one weight of its own.
    lam_P = np.array(
        [pipeline.rng(seed, _MIXUP, p // 2).beta(alpha, alpha) for p in position_B[::2]], np.float32
    )
    lam_B = np.repeat(lam_P, 2)
    partner_B = np.arange(len(lam_B)) ^ 1  # 0 <-> 1, 2 <-> 3, ...
    lam_Bx1x1x1 = lam_B[:, None, None, None]
    images = lam_Bx1x1x1 * x_BxSxSxC + (1 - lam_Bx1x1x1) * x_BxSxSxC[partner_B]
    targets = lam_B[:, None] * targets_BxK + (1 - lam_B[:, None]) * targets_BxK[partner_B]
    return images.astype(np.float32), targets.astype(np.float32)
