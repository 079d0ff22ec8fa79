"""Where a run lives: a local directory or a bucket (`gs://`, `s3://`).

`workdir_path` is the one way a `--workdir` (or a path in one) becomes a path: a local path stays a
`pathlib.Path`, exactly as before; a URL becomes an etils `epath.Path` (fsspec's gcsfs / s3fs underneath, the
path type orbax itself uses). Both speak the pathlib calls the run's code uses (`/`, exists, is_dir,
read_text, write_text, unlink, name, with_name, parent).

What an object store does differently is decided here and nowhere else:
- it has no directories: `make_dirs` creates nothing in a bucket (gcsfs and s3fs would create a missing
  *bucket* there, so a mistyped name would make a new one instead of failing);
- it cannot append: `Appender` rewrites the object whole from the text it holds (an upload replaces an object
  atomically, so a reader never sees a line cut short);
- it cannot rename: `move_tree` copies every object, then deletes the source (an interrupted move leaves
  both copies, never a deleted object that was not copied);
- listing returns sizes: `file_sizes` is one listing, not one request per file;
- objects change behind fsspec's back (TensorStore writes orbax's arrays itself): directory listings of
  gs:// and s3:// are not cached (fsspec's `use_listings_cache=False`, unless the user's fsspec config says
  otherwise), so an existence check never answers from a stale listing;
- files another program writes with plain file I/O (W&B's, a process's stdout) cannot go there: `local_dir`
  is a local directory of the run's own for them.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import fsspec
from etils import epath

BUCKET_SCHEMES = ("gs", "s3")
for _protocol in ("gs", "gcs", "s3", "s3a"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)
# An object may be replaced about once a second (GCS's limit per object name; S3 has none as strict).
MIN_REWRITE_INTERVAL_S = 1.0
LOCAL_ROOT = Path("~/.cache/lax-pretrain")  # local_dir's default root

AnyPath = Path | epath.Path


def scheme(path: str | os.PathLike) -> str | None:
    """'gs' for 'gs://b/x', None for a local path."""
    text = str(path) if isinstance(path, epath.Path) else os.fspath(path)
    head, sep, _ = text.partition("://")
    return head if sep and head.isidentifier() else None


def is_bucket(path: str | os.PathLike) -> bool:
    return scheme(path) is not None


def workdir_path(path: str | os.PathLike) -> AnyPath:
    """A local path as `pathlib.Path`, a `gs://` or `s3://` URL as `epath.Path`; any other URL is refused in one
    line (ValueError) naming it."""
    kind = scheme(path)
    if kind is None:
        return Path(path)
    if kind not in BUCKET_SCHEMES:
        raise ValueError(
            f"{path}: a workdir is a local path or a {' or '.join(s + '://' for s in BUCKET_SCHEMES)} URL"
        )
    return path if isinstance(path, epath.Path) else epath.Path(str(path))


def resolved(path: str | os.PathLike) -> AnyPath:
    """`workdir_path`, made absolute where it is local (a URL already is)."""
    p = workdir_path(path)
    return p if is_bucket(p) else p.resolve()


def path_id(path: str | os.PathLike) -> str:
    """A file-name-safe id of a workdir, the same from any current directory: its absolute path or URL with
    every other character than letters and digits as '-', the last 64."""
    return "".join(c if c.isalnum() else "-" for c in str(resolved(path)))[-64:].strip("-")


def local_dir(path: str | os.PathLike, purpose: str, root: str | os.PathLike | None = None) -> Path:
    """Where files of the run at `path` that must be written with plain file I/O go: the workdir itself when
    it is local, else `<root>/<path_id>` (root: ~/.cache/lax-pretrain/<purpose> unless given)."""
    if not is_bucket(path):
        return Path(path)
    base = Path(root) if root else LOCAL_ROOT.expanduser() / purpose
    return base / path_id(path)


def make_dirs(path: AnyPath) -> None:
    """`mkdir -p` on disk; nothing in a bucket, where a directory is only the prefix of its objects."""
    if not is_bucket(path):
        path.mkdir(parents=True, exist_ok=True)


def replace_text(path: AnyPath, text: str) -> None:
    """Replaces a file's content atomically: on disk through a temporary file and a rename, in a bucket by
    one upload (an object is replaced whole or not at all)."""
    if is_bucket(path):
        path.write_text(text)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def move_tree(source: AnyPath, target: AnyPath) -> None:
    """Moves a directory to `target` (whose parent exists or, in a bucket, needs not)."""
    if is_bucket(source):
        fs = _filesystem(source)
        root, new_root = _fs_path(source).rstrip("/"), _fs_path(target).rstrip("/")
        objects = sorted(fs.find(root))
        if objects:  # object by object (server-side copies), every one copied before any is deleted
            fs.copy(objects, [new_root + name[len(root) :] for name in objects])
            fs.rm(objects)
    else:
        shutil.move(source, target)


def file_sizes(directory: AnyPath) -> dict[str, int]:
    """'relative/path' -> size in bytes of every file under `directory`."""
    if not is_bucket(directory):
        return {str(f.relative_to(directory)): f.stat().st_size for f in directory.rglob("*") if f.is_file()}
    fs = _filesystem(directory)
    root = _fs_path(directory).rstrip("/")
    found = fs.find(root, detail=True)
    return {
        name[len(root) + 1 :]: int(info["size"])
        for name, info in found.items()
        if info.get("type") == "file" and name.startswith(root + "/")
    }


class Appender:
    """Appends text to a file. On disk each append goes to the file at once. In a bucket the object is
    rewritten whole from the text held here, at most once per MIN_REWRITE_INTERVAL_S, except that an append
    with `durable=True` (records a checkpoint is about to rely on) is uploaded at once; `close()` uploads the
    rest."""

    def __init__(self, path: AnyPath):
        self.path = path
        self.bucket = is_bucket(path)
        self._text = path.read_text() if self.bucket and path.exists() else ""
        self._pending = False
        self._uploaded_at = -float("inf")

    def append(self, text: str, *, durable: bool = False) -> None:
        if not self.bucket:
            with self.path.open("a") as f:
                f.write(text)
            return
        self._text += text
        self._pending = True
        if durable or time.monotonic() - self._uploaded_at >= MIN_REWRITE_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.path.write_text(self._text)
            self._pending = False
            self._uploaded_at = time.monotonic()

    def close(self) -> None:
        self.flush()


def _filesystem(path: AnyPath) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem(scheme(path))


def _fs_path(path: AnyPath) -> str:
    """'bucket/key' as fsspec's gcsfs / s3fs name an object."""
    return str(path).partition("://")[2]
