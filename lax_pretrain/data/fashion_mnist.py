"""TFDS builder for Fashion-MNIST from the four IDX files of Debian's `dataset-fashion-mnist` (MIT).

Features: `image` uint8 (28, 28, 1) Tensor, `label` ClassLabel with the 10 names below.
Splits: train 60,000, test 10,000 (the official split). The files are read from the manual dir
(`data.manual_dir`, default /usr/share/datasets/fashion-mnist) on the first build only.

TFDS's own `fashion_mnist` builder encodes PNGs with TensorFlow; this one stores raw pixels and needs none.
It is constructed directly (not registered), so the two never clash; building takes about 3 s.
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def check_manual_dir(manual_dir: str) -> None:
    missing = [f for pair in _FILES.values() for f in pair if not os.path.isfile(os.path.join(manual_dir, f))]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in data.manual_dir={manual_dir!r} "
            f"(missing: {', '.join(missing)}). "
            "Run scripts/install_system_data.sh (it apt-installs dataset-fashion-mnist into "
            "/usr/share/datasets/fashion-mnist), or set --config.data.manual_dir to a directory holding the four "
            "*-ubyte.gz files."
        )


def read_idx(path: str) -> np.ndarray:
    """IDX: big-endian magic (0, 0, dtype 0x08 = uint8, ndim), then ndim int32 sizes, then the data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    ndim = data[3]
    shape = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw uint8 pixels from the Debian IDX files."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "apt-get install dataset-fashion-mnist (scripts/install_system_data.sh)."

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # Stored as raw bytes: the default (one int64 per pixel) makes the build three times slower.
                    "image": tfds.features.Tensor(
                        shape=(28, 28, 1), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                    ),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        check_manual_dir(manual_dir)
        return {
            split: self._generate_examples(*(os.path.join(manual_dir, f) for f in files))
            for split, files in _FILES.items()
        }

    def _generate_examples(self, images_path, labels_path):
        x_Nx28x28 = read_idx(images_path)
        y_N = read_idx(labels_path)
        for i, (x_28x28, y) in enumerate(zip(x_Nx28x28, y_N)):
            yield i, {"image": x_28x28[:, :, None], "label": int(y)}
