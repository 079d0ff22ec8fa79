"""An export directory appears whole or not at all.

    with export_dir(out) as tmp:      # a fresh temporary sibling of `out`
        write files into tmp          # any exception: tmp is removed, `out` is as it was
                                      # success: tmp is renamed onto `out`

`out` may be missing, empty, or an earlier export (every entry one of `EXPORT_FILES`), which is replaced;
anything else in it (a tokenizer the user added, a workdir) is refused before a byte is written, so an export
never deletes what it did not write. Parent directories created for `out` are removed again on failure.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Everything any export format writes (hf_checkpoint, cola_checkpoint, lax_checkpoint).
EXPORT_FILES = frozenset({"config.json", "model.safetensors", "modeling_lax_llama.py"})


def check_replaceable(out: Path) -> None:
    """Raises unless `out` is missing, an empty directory, or an earlier export."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"--out={out} is a file; an export is a directory")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES or not p.is_file())
    if foreign:
        raise FileExistsError(
            f"--out={out} holds {foreign[0]!r}, which no export writes: refusing to replace it "
            "(choose a new or empty directory)"
        )


@contextlib.contextmanager
def export_dir(out: str | Path) -> Iterator[Path]:
    out = Path(out).absolute()
    check_replaceable(out)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        _move_onto(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # deepest first; each is empty unless someone else wrote there meanwhile
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def _move_onto(tmp: Path, out: Path) -> None:
    """Renames tmp onto out; an earlier export is moved aside first and deleted only once tmp is in place."""
    if not out.exists() or not any(out.iterdir()):
        tmp.replace(out)  # rename(2) replaces an empty directory atomically
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.replace(old / out.name)
    try:
        tmp.replace(out)
    except BaseException:
        (old / out.name).replace(out)
        old.rmdir()
        raise
    shutil.rmtree(old)
