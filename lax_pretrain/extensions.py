"""Extensions from outside the package: modules that register kinds, gates, optimizers or metrics.

Every command takes `--import=MODULE` (repeatable; a dotted module name on the Python path, or a path to a
.py file) and imports it before the config is read, on every process, so `kind=<its name>` or
`optim.name=<its name>` work like the built-ins. Installed packages can instead declare an entry point in the
group `lax_pretrain.extensions`; every command loads those by itself. The modules imported with --import are
recorded in the run's config (`extensions`), and every reader of a workdir (resume, `lax-sample`,
`lax-convert export`, `lax-finetune`) imports them again from there.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from etils import epath

ENTRY_POINT_GROUP = "lax_pretrain.extensions"
FLAG = "--import"
WORKDIR_FLAGS = ("--workdir", "--base")  # run directories whose recorded extensions a command imports
RUN_CONFIG = "config.json"

_imported: list[str] = []  # what --import brought in, in order: what a config built in this process records


def import_extension(name: str) -> None:
    """Imports one extension (dotted name or .py path) once; a missing or failing module is one line."""
    if name.endswith(".py"):
        name = str(Path(name).resolve())  # recorded absolute: a resume from another directory finds it
    if name in _imported:
        return
    try:
        if name.endswith(".py"):
            path = Path(name)
            module_name = f"lax_pretrain_extension_{path.stem}"
            if module_name not in sys.modules:
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or not path.is_file():
                    raise FileNotFoundError(f"no such file {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
        else:
            importlib.import_module(name)
    except ImportError as e:
        raise ValueError(
            f"{FLAG}={name}: {e}; put the module on PYTHONPATH (or give the path of its .py file)"
        ) from e
    except FileNotFoundError as e:
        raise ValueError(f"{FLAG}={name}: {e}") from e
    _imported.append(name)


def import_extensions(names: Iterable[str]) -> None:
    for name in names:
        import_extension(name)


def load_entry_points() -> None:
    """Imports every installed package's `lax_pretrain.extensions` entry point."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def imported() -> list[str]:
    """The --import modules of this process, as a config records them."""
    return list(_imported)


def _flag_values(argv: list[str], flag: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def recorded(workdir: str) -> list[str]:
    """The extensions a workdir's config.json records (none when it has no config yet)."""
    path = epath.Path(workdir) / RUN_CONFIG
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text()).get("extensions") or [])
    except (json.JSONDecodeError, OSError, AttributeError):
        return []  # the command's own reading of config.json reports what is wrong with it


def from_argv(argv: Iterable[str]) -> list[str]:
    """What a command line needs imported, read before any flag parsing so the config file and its overrides
    see what the modules register: its --import values (`--import=M` or `--import M`), then the extensions
    recorded by the workdirs it names (`--workdir`, `--base`)."""
    argv = list(argv)
    names = _flag_values(argv, FLAG)
    for flag in WORKDIR_FLAGS:
        for workdir in _flag_values(argv, flag):
            names += [n for n in recorded(workdir) if n not in names]
    return names
