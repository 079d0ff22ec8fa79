"""AutoAugment's ImageNet policy (Cubuk et al., 2019), the augmentation of the LaX ViT recipe, on uint8 arrays.

Per image: one of the 25 sub-policies uniformly; each of its two operations fires with its probability, at its
magnitude level (0..9), with a random sign for the signed ones. The magnitude ranges are the paper's (and
torchvision's `AutoAugment` with 10 bins): rotate up to 30 degrees, shear up to 0.3, enhancement factors
1 +- 0.9, posterize 8 -> 4 bits, solarize thresholds 255 -> 0. Geometric operations fill with mid-grey (128),
which is 0 after the recipe's mean = std = 0.5 normalisation (timm fills with the mean too). Operations come
from Pillow (`ImageOps`, `ImageEnhance`, affine transforms), the random draws from the caller's generator, so
an image's augmentation is a function of (seed, position) like the rest of the pipeline.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

LEVELS = 10
FILL = 128
SIGNED = ("rotate", "shear_x", "color", "contrast", "sharpness")
# (operation, probability, magnitude level or None), two per sub-policy.
IMAGENET_POLICY = (
    (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
    (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
    (("equalize", 0.8, None), ("equalize", 0.6, None)),
    (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
    (("equalize", 0.4, None), ("solarize", 0.2, 4)),
    (("equalize", 0.4, None), ("rotate", 0.8, 8)),
    (("solarize", 0.6, 3), ("equalize", 0.6, None)),
    (("posterize", 0.8, 5), ("equalize", 1.0, None)),
    (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
    (("equalize", 0.6, None), ("posterize", 0.4, 6)),
    (("rotate", 0.8, 8), ("color", 0.4, 0)),
    (("rotate", 0.4, 9), ("equalize", 0.6, None)),
    (("equalize", 0.0, None), ("equalize", 0.8, None)),
    (("invert", 0.6, None), ("equalize", 1.0, None)),
    (("color", 0.6, 4), ("contrast", 1.0, 8)),
    (("rotate", 0.8, 8), ("color", 1.0, 2)),
    (("color", 0.8, 8), ("solarize", 0.8, 7)),
    (("sharpness", 0.4, 7), ("invert", 0.6, None)),
    (("shear_x", 0.6, 5), ("equalize", 1.0, None)),
    (("color", 0.4, 0), ("equalize", 0.6, None)),
    (("equalize", 0.4, None), ("solarize", 0.2, 4)),
    (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
    (("invert", 0.6, None), ("equalize", 1.0, None)),
    (("color", 0.6, 4), ("contrast", 1.0, 8)),
    (("equalize", 0.8, None), ("equalize", 0.6, None)),
)
POLICIES = {"imagenet": IMAGENET_POLICY}


def magnitude(op: str, level: int) -> float:
    """The operation's magnitude at `level` (0..LEVELS-1), before the sign."""
    t = level / (LEVELS - 1)
    if op == "rotate":
        return 30.0 * t
    if op == "shear_x":
        return 0.3 * t
    if op in ("color", "contrast", "sharpness"):
        return 0.9 * t
    if op == "posterize":
        return float(8 - round(4 * t))
    if op == "solarize":
        return 255.0 * (1 - t)
    raise ValueError(f"operation {op!r} has no magnitude")


def apply_op(image: Image.Image, op: str, m: float) -> Image.Image:
    """One operation at (signed) magnitude m on an 'L' or 'RGB' image."""
    fill = FILL if image.mode == "L" else (FILL,) * 3
    if op == "rotate":
        return image.rotate(m, resample=Image.NEAREST, fillcolor=fill)
    if op == "shear_x":  # output (x, y) reads input (x + m y, y), as in the paper's code
        return image.transform(
            image.size, Image.AFFINE, (1, m, 0, 0, 1, 0), resample=Image.NEAREST, fillcolor=fill
        )
    if op == "color":
        return ImageEnhance.Color(image).enhance(1 + m)
    if op == "contrast":
        return ImageEnhance.Contrast(image).enhance(1 + m)
    if op == "sharpness":
        return ImageEnhance.Sharpness(image).enhance(1 + m)
    if op == "posterize":
        return ImageOps.posterize(image, int(m))
    if op == "solarize":
        return ImageOps.solarize(image, m)
    if op == "autocontrast":
        return ImageOps.autocontrast(image)
    if op == "equalize":
        return ImageOps.equalize(image)
    if op == "invert":
        return ImageOps.invert(image)
    raise ValueError(f"unknown AutoAugment operation {op!r}")


def auto_augment(x_HxWxC: np.ndarray, rng: np.random.Generator, policy: str = "imagenet") -> np.ndarray:
    """One random sub-policy of `policy` applied to a uint8 HxWxC (C = 1 or 3) image."""
    sub_policy = POLICIES[policy][rng.integers(len(POLICIES[policy]))]
    draws = rng.random((len(sub_policy), 2))  # (fires?, sign) per operation, drawn whether or not it fires
    c = x_HxWxC.shape[-1]
    image = Image.fromarray(x_HxWxC[:, :, 0] if c == 1 else x_HxWxC)
    for (op, prob, level), (fire, sign) in zip(sub_policy, draws):
        if fire < prob:
            m = magnitude(op, level) if level is not None else 0.0
            image = apply_op(image, op, -m if op in SIGNED and sign < 0.5 else m)
    return np.asarray(image).reshape(x_HxWxC.shape)
