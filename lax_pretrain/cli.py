"""What every command line shares: flags on a private `FlagValues`, one-line errors and exit status 2.

Each entry point (`lax-train`, `lax-sample`, ...) is a module with its flags at module level and an importable
`main(argv=None) -> int`:

    FLAGS = cli.new_flags()
    flags.DEFINE_string("workdir", None, "...", flag_values=FLAGS)

    def _run(fv) -> None: ...                     # the command's work, reading fv.workdir
    def main(argv=None) -> int: return cli.run(_run, FLAGS, argv)

    if __name__ == "__main__":
        sys.exit(main())

`argv` is sys.argv-style (the program name first) or the arguments alone (the first starts with "-" or
is one of the command's `commands`); None means this process's own command line. A command with
sub-commands (`lax-convert import|export`) passes `commands=` and its work gets the one that was named.
A private `FlagValues` per command means importing several commands into one process (tests, notebooks)
defines nothing globally and never collides. A configuration or data error (ValueError, FileNotFoundError,
a flag that does not parse, a `--config.a.b` override of a key the config lacks) prints one line
`error: ...` naming the key and returns 2, with no traceback; `--verbose` re-raises it with the traceback.
`--help` prints the command module's docstring and its flags. A work function that returns an int gives the
exit status (lax-sweep: 1 when a run failed).

Commands that take positional arguments (`lax-compare RUN_DIR...`) use argparse through the same rules:
`p = cli.parser(prog, __doc__)`, `def main(argv=None) -> int: return cli.run_parsed(p, _run, argv)`.
"""

from __future__ import annotations

import argparse
import faulthandler
import re
import sys
from collections.abc import Callable, Sequence

from absl import flags
from absl import logging as absl_logging
from ml_collections.config_flags.config_flags import is_config_flag

from lax_pretrain import extensions

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError)
HELP = ("--help", "-h", "--helpshort", "--helpfull")


def new_flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_bool(
        "verbose", False, "Show the full traceback of a configuration or data error.", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "import",
        [],
        "A module (dotted name, or a .py path) that registers kinds, gates, optimizers or metrics; imported "
        "before the config is read and recorded in the run's config. Repeatable.",
        flag_values=fv,
    )
    return fv


def _import_extensions(argv: Sequence[str]) -> None:
    """Installed extensions (entry points) and the --import modules, before the config file is loaded."""
    extensions.load_entry_points()
    extensions.import_extensions(extensions.from_argv(argv[1:]))


def run(
    work: Callable[..., object],
    fv: flags.FlagValues,
    argv: Sequence[str] | None = None,
    *,
    commands: Sequence[str] = (),
) -> int:
    """Parses `argv` into `fv`, runs `work(fv)` (`work(fv, command)` given `commands`), and turns user errors
    into one line on stderr and exit status 2."""
    if argv is None:
        _own_process()
        return _parse_and_work(work, fv, list(sys.argv), commands)
    argv = list(argv)
    if not argv or argv[0].startswith("-") or argv[0] in commands:
        argv = [sys.argv[0], *argv]
    defined = set(fv)
    try:
        return _parse_and_work(work, fv, argv, commands)
    finally:
        # The next in-process call starts from the defaults, without the `--config.a.b` flags that
        # config_flags defined while parsing.
        fv.unparse_flags()
        for name in set(fv) - defined:
            delattr(fv, name)


def _parse_and_work(
    work: Callable[..., object], fv: flags.FlagValues, argv: list[str], commands: Sequence[str]
) -> int:
    if any(a in HELP for a in argv[1:]):
        print(_help(work, fv))
        return 0
    try:
        _import_extensions(argv)
    except ValueError as e:
        if "--verbose" in argv:
            raise
        return _fail(e)
    try:
        args = _parse(fv, argv)
        if commands and (len(args) != 1 or args[0] not in commands):
            raise flags.Error(f"expected one command, {' or '.join(commands)}; got {args}")
        if args and not commands:
            raise flags.Error(f"unexpected argument {args[0]!r} (flags are spelt --name=value)")
    except flags.Error as e:
        if "--verbose" in argv:
            raise
        return _fail(e)
    try:
        status = work(fv, args[0]) if commands else work(fv)
    except USER_ERRORS as e:
        if fv.verbose:
            raise
        return _fail(e)
    return status if isinstance(status, int) else 0  # a command may report its own status (lax-sweep: 1)


def _own_process() -> None:
    """A command that is the whole process logs as `absl.app.run` would have it; an in-process call (tests,
    notebooks) leaves the host's logging alone."""
    absl_logging.use_absl_handler()
    # absl's log handler prints "Logging before flag parsing" until its own (global) flags are parsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
        flags.FLAGS.verbosity = 0  # INFO, as app.run sets it
    faulthandler.enable()


def _parse(fv: flags.FlagValues, argv: list[str]) -> list[str]:
    """fv(argv) -> the positional arguments; config_flags' own failure modes become flag errors."""
    saved, sys.argv = sys.argv, argv  # config_flags finds the `--config.a.b=v` overrides in sys.argv
    try:
        args = fv(argv)[1:]
        for name in list(fv):
            # config_flags defers a config file that fails to load (missing file) to the config's first use.
            if is_config_flag(fv[name]) and fv[name].value is not None:
                getattr(fv[name].value, "lock", None)
    except OSError as e:  # config_flags lists the paths it tried; the last line says why
        configs = "/".join(f"--{name}" for name in fv if is_config_flag(fv[name]))
        raise flags.IllegalFlagValueError(f"{configs}: {str(e).strip().splitlines()[-1].strip()}") from e
    except (AttributeError, KeyError) as e:
        message = _missing_key(e, argv)
        if message is None:
            raise
        raise flags.IllegalFlagValueError(message) from e
    finally:
        sys.argv = saved
    return args


def _missing_key(error: Exception, argv: list[str]) -> str | None:
    """config_flags reports an override of a key the config lacks as a bare KeyError/AttributeError('key');
    name the argument that holds it."""
    text = str(error)
    key = re.search(r"\w+", text)
    for arg in argv[1:]:
        override = re.match(r"--?(?:no)?(\w+(?:\.\w+)+)", arg)
        if key and override and key.group() in override.group(1).split(".")[1:]:
            hint = re.search(r'Did you mean "(\w+)"', text)
            return f"--{override.group(1)}: the config has no key {key.group()!r}" + (
                f" (did you mean {hint.group(1)!r}?)" if hint else ""
            )
    return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if "Traceback (most recent call last)" in text:
        # config_flags pastes get_config's whole traceback into the flag error: keep its final line.
        head, _, trace = text.partition("Error whilst parsing config file:")
        text = head + re.sub(r"^[\w.]+: ", "", trace.strip().splitlines()[-1])
    return " ".join(text.split()) or type(error).__name__


def _fail(error: BaseException) -> int:
    print(f"error: {_one_line(error)}", file=sys.stderr)
    return 2


def _help(work: Callable[..., object], fv: flags.FlagValues) -> str:
    doc = (sys.modules[work.__module__].__doc__ or "").strip()
    return f"{doc}\n\nflags:\n{fv.get_help()}" if doc else fv.get_help()


class _BadArguments(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage and exit the process
        raise _BadArguments(message)


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argparse parser whose errors come back to `run_parsed`, with the shared `--verbose`."""
    p = _Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--verbose", action="store_true", help="show the traceback of a configuration or data error"
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        help="a module (dotted name or .py path) that registers kinds, gates, optimizers or metrics",
    )
    return p


def run_parsed(
    p: argparse.ArgumentParser, work: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None
) -> int:
    """`run` for argparse commands: parses `argv` (default sys.argv[1:]) and returns work(args) (None: 0), or 2
    after one line on stderr for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = p.parse_intermixed_args(argv)
        _import_extensions(["", *(f"--import={m}" for m in args.imports)])
    except (_BadArguments, ValueError) as e:
        return _fail(e)
    except SystemExit as e:  # --help: printed; a status to return rather than this process's end
        return int(e.code or 0)
    try:
        status = work(args)
    except USER_ERRORS as e:
        if args.verbose:
            raise
        return _fail(e)
    return status if isinstance(status, int) else 0
