"""Sweep files, their runs and the names of both: what every other experiment module calls a run or a variant.

A sweep file (configs/sweeps/*.py) defines `get_sweep()`, the list of runs as override dicts:

    {"config": "configs/llama.py:60m,kind=cola,lax=kron", "optim.lr": 1e-3}

`config` is the recipe and its compact argument; every other key is a dotted config path, passed to the
trainer as `--config.<key>=<value>`. Settings that every run needs but that should not name it (a CPU step
budget) go in the file's `SHARED` dict, or per run under the key `shared` (`recipes(..., shared=...)`).
`get_sweep` may take keyword parameters (configs/sweeps/cpu.py: suite, seeds, budget, tiny), which
`load_sweep(path, **params)` passes on. `axis`, `product`, `zip_`, `variants`, `recipes` and `shrink` build
the lists.

Names, the one scheme every table, legend and run directory uses:
  run      `<recipe file stem>-<preset>`, then `_key=value` for each compact option in the order written, then
           `_key=value` for each other override of the run, sorted by key; characters other than letters,
           digits and `._=+-` become '-'. The same overrides always give the same name, whatever else is in
           the sweep: `llama-60m_kind=cola_lax=kron`, `vit-tiny_kind=tt_lax=kron_rank=16_optim.lr=0.001`.
  variant  the kind, `+crossing` when there is one: `dense`, `cola`, `cola+kron`
           (`lax_pretrain.layers.variants.variant_name`).

    python -m lax_pretrain.experiments.sweep --sweep=configs/sweeps/cpu.py --workdir=runs/sweep_cpu \
        [--dry_run] [--only=REGEX] [--parallel=N] [--launcher=local|tpu|slurm] [--launcher_args='...'] \
        [--set=train.steps=150 ...] [--wandb_spec=sweep.yaml]

runs (or prints) every run of a sweep file, each in WORKDIR/<run name>, through `experiments.runner`
(finished runs skipped, unfinished ones resumed, failures recorded; see there). `--set` overrides apply to
every run and stay out of the names. Exit status 0 when every run finished (or was handed to a scheduler),
1 when one failed or was left unfinished, 2 on bad input. Run it from the repository root: recipe paths are
relative to it.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lax_pretrain import cli, extensions
from lax_pretrain.experiments import runner, wandb_sweep
from lax_pretrain.layers import KINDS
from lax_pretrain.layers.variants import variant_name
from lax_pretrain.train import storage, validate

LAUNCHERS = {"local": None, "tpu": "scripts/launch_tpu_pod.sh", "slurm": "scripts/launch_slurm.sh"}
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._=+\-]")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
SHARED_KEY = "shared"

# The smoke-test model of every tiny run (scripts/reproduce.py --tiny, the tests): each width applies where
# the recipe's model config has it, so one dict serves every family.
TINY_MODEL = {"d_model": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2, "ffn_dim": 64, "mlp_dim": 64}
TINY_RANK = 8


# ------------------------------------------------------------------------------------- building sweeps


def axis(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
    """One swept key: axis('optim.lr', [1e-3, 3e-3]) -> [{'optim.lr': 1e-3}, {'optim.lr': 3e-3}]."""
    return [{key: v} for v in values]


def product(*axes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cartesian product of lists of partial override dicts, merged left to right (first axis outermost)."""
    return [_merge(combo) for combo in itertools.product(*axes)]


def zip_(*axes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Element-wise merge of equally long lists of partial override dicts."""
    if len({len(a) for a in axes}) > 1:
        raise ValueError(f"zip_ needs lists of equal length, got lengths {[len(a) for a in axes]}")
    return [_merge(combo) for combo in zip(*axes)]


def _merge(dicts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for d in dicts:
        clash = set(merged) & set(d)
        if clash:
            raise ValueError(f"two axes set the same key(s) {sorted(clash)}")
        merged.update(d)
    return merged


def variants(
    kinds: Sequence[str], crossings: Sequence[str] = ("none",), ranks: Sequence[int | None] = (None,)
) -> list[str]:
    """Compact options for kinds x crossings x ranks: 'kind=cola,lax=kron,rank=64'. A kind without a latent
    (dense) has neither a crossing nor a rank, so it appears once ('kind=dense'); rank None leaves the preset's
    rank."""
    out = []
    for kind in kinds:
        if not KINDS.get(kind, key="kind").has_latent:
            out.append(f"kind={kind}")
            continue
        for lax, rank in itertools.product(crossings, ranks):
            out.append(f"kind={kind},lax={lax}" + (f",rank={rank}" if rank is not None else ""))
    return out


def recipes(
    recipe: str, presets: Sequence[str], options: Sequence[str], *, shared: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """{'config': 'RECIPE:PRESET,OPTIONS'} for presets x options (from `variants`), preset outermost; `shared`
    settings go with every one of them, outside the names."""
    extra = {SHARED_KEY: dict(shared)} if shared else {}
    return [{"config": f"{recipe}:{p}" + (f",{o}" if o else ""), **extra} for p in presets for o in options]


def shrink(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` at the TINY_MODEL size: the widths join its shared settings (those its recipe's model has), rank
    TINY_RANK its compact options (so a tiny low-rank run is named by the rank it trains at)."""
    run = make_run(spec)
    model = load_recipe(run.config).model
    options = dict(run.options)
    if options.get("kind", "dense") != "dense":
        options["rank"] = str(TINY_RANK)
    config = f"{run.recipe}:" + ",".join([run.preset, *(f"{k}={v}" for k, v in options.items())])
    widths = {f"model.{k}": v for k, v in TINY_MODEL.items() if k in model}
    return {**spec, "config": config, SHARED_KEY: {**spec.get(SHARED_KEY, {}), **widths}}


# ------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One run of a sweep: the recipe + compact argument, its own overrides (in the name) and the shared ones
    (not in the name)."""

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> str:
        return self.config.partition(":")[0]

    @property
    def arg(self) -> str:
        return self.config.partition(":")[2]

    @property
    def preset(self) -> str:
        return self.arg.split(",")[0]

    @property
    def options(self) -> dict[str, str]:
        """The compact options in the order written: {'kind': 'cola', 'lax': 'kron'}."""
        return dict(p.split("=", 1) for p in self.arg.split(",")[1:] if p)

    @property
    def stem(self) -> str:
        return Path(self.recipe).stem

    @property
    def variant(self) -> str:
        return variant_name(self.options.get("kind", "dense"), self.options.get("lax", "none"))

    def _parts(self) -> list[str]:
        return [
            f"{self.stem}-{self.preset}",
            *(f"{k}={v}" for k, v in self.options.items()),
            *(f"{k}={cli_value(v)}" for k, v in sorted(self.overrides.items())),
        ]

    @property
    def name(self) -> str:
        return _NAME_UNSAFE.sub("-", "_".join(self._parts()))

    @property
    def tags(self) -> list[str]:
        """W&B tags: the name's parts (stem-preset, each compact option and override), <= 64 characters."""
        return [t.replace(",", ";")[:64] for t in self._parts()]

    def all_overrides(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Shared, then the run's own, then `extra` (the command line's --set): later ones win."""
        return {**self.shared, **self.overrides, **(extra or {})}


def make_run(spec: dict[str, Any], shared: dict[str, Any] | None = None) -> Run:
    spec = dict(spec)
    config = spec.pop("config", None)
    if not isinstance(config, str) or ":" not in config:
        raise ValueError(f"a run needs 'config': 'RECIPE.py:PRESET[,key=value...]', got {config!r} in {spec}")
    run_shared = {**(shared or {}), **spec.pop(SHARED_KEY, {})}
    for key in [*spec, *run_shared]:
        if not _DOTTED.fullmatch(key):
            raise ValueError(
                f"override key {key!r} of run {config!r} is not a dotted config path like 'train.steps'"
            )
    return Run(config, spec, run_shared)


def cli_value(value: Any) -> str:
    """An override as the trainer's flags (and the run names) spell it; tuples in absl's '(a,b)' syntax."""
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(cli_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def load_module(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_lax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str | Path, **params: Any) -> tuple[str, list[Run]]:
    """(sweep name = the file's stem, its runs); `params` go to get_sweep(). Raises if get_sweep() is missing,
    does not take `params`, or gives two runs the same name."""
    path = Path(path)
    module = load_module(path)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path} defines no get_sweep()")
    try:
        specs = module.get_sweep(**params)
    except TypeError as e:
        if params and "argument" in str(e):
            raise ValueError(f"{path}: get_sweep() does not take {sorted(params)} ({e})") from e
        raise
    runs = [make_run(spec, getattr(module, "SHARED", None)) for spec in specs]
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: runs with the same overrides (same name): {', '.join(duplicates)}")
    return path.stem, runs


def select(runs: Sequence[Run], only: str | None) -> list[Run]:
    """The runs whose name matches the regular expression `only` (re.search), all of them if it is empty."""
    if not only:
        return list(runs)
    pattern = re.compile(only)
    return [r for r in runs if pattern.search(r.name)]


@functools.cache
def load_recipe(config: str):
    """The ConfigDict of 'RECIPE.py:ARG' before any override (RECIPE relative to the working directory).
    Cached and shared: do not modify it."""
    recipe, _, arg = config.partition(":")
    return load_module(recipe).get_config(arg or None)


def target_steps(run: Run, extra: dict[str, Any] | None = None) -> int:
    """train.steps as the trainer resolves it: the recipe's, then shared, the run's, --set overrides."""
    overrides = run.all_overrides(extra)
    if "train.steps" in overrides:
        return int(overrides["train.steps"])
    return int(load_recipe(run.config).train.steps)


# ------------------------------------------------------------------------------------------- commands


def train_args(
    run: Run, workdir: str | Path | None, sweep_name: str, extra: dict[str, Any] | None = None
) -> list[str]:
    """The trainer's arguments (no interpreter): the sweep's own --import modules, --config, --workdir (unless
    None), overrides, the W&B group and name."""
    args = [f"--import={m}" for m in extensions.imported()]
    args += [f"--config={run.config}"] + ([f"--workdir={workdir}"] if workdir is not None else [])
    args += [f"--config.{k}={cli_value(v)}" for k, v in run.all_overrides(extra).items()]
    return args + [f"--config.wandb.group={sweep_name}", f"--config.wandb.name={run.name}"]


def command(
    run: Run,
    workdir: str | Path,
    sweep_name: str,
    extra: dict[str, Any] | None = None,
    *,
    launcher: str = "local",
    launcher_args: Sequence[str] = (),
) -> list[str]:
    """argv of one run: `python -m lax_pretrain.train ARGS`, or `scripts/launch_X.sh [LAUNCHER ARGS]
    --workdir=W -- ARGS` (the launch scripts take the workdir as their own option, the trainer's arguments
    after `--`)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher={launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if launcher == "local":
        return [sys.executable, "-m", "lax_pretrain.train", *train_args(run, workdir, sweep_name, extra)]
    return [
        LAUNCHERS[launcher],
        *launcher_args,
        f"--workdir={workdir}",
        "--",
        *train_args(run, None, sweep_name, extra),
    ]


def tags_env(run: Run) -> dict[str, str]:
    """W&B tags travel as WANDB_TAGS: `wandb.tags` is a list in the base config, which absl config flags
    cannot override from the command line."""
    return {"WANDB_TAGS": ",".join(run.tags)}


def jobs(
    runs: Sequence[Run],
    workdir: str | Path,
    sweep_name: str,
    extra: dict[str, Any] | None = None,
    *,
    launcher: str = "local",
    launcher_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> list[runner.Job]:
    """What the runner trains: each run in `<workdir>/<run name>` up to its train.steps."""
    out = []
    for run in runs:
        run_dir = storage.workdir_path(workdir) / run.name
        argv = command(run, run_dir, sweep_name, extra, launcher=launcher, launcher_args=launcher_args)
        info = {"config": run.config, "overrides": run.overrides, "shared": run.shared, "launcher": launcher}
        out.append(
            runner.Job(
                run.name,
                run_dir,
                target_steps(run, extra),
                argv,
                env={**(env or {}), **tags_env(run)},
                info=info,
                detaches=launcher != "local",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- the CLI


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set={item!r}: expected KEY=VALUE, e.g. --set=train.steps=150")
        out[key.removeprefix("config.")] = value
    return out


def _parser():
    p = cli.parser("lax-sweep", __doc__)
    p.add_argument(
        "--sweep", required=True, help="sweep file defining get_sweep(), e.g. configs/sweeps/cpu.py"
    )
    p.add_argument("--workdir", required=True, help="sweep directory: one sub-directory per run")
    p.add_argument("--dry_run", action="store_true", help="print one command per run instead of running")
    p.add_argument("--only", default="", help="regular expression: only runs whose name matches (re.search)")
    p.add_argument("--parallel", type=int, default=1, help="how many runs at once")
    p.add_argument(
        "--launcher", default="local", choices=list(LAUNCHERS), help="local, or scripts/launch_*.sh"
    )
    p.add_argument("--launcher_args", default="", help="launch script options before its '--' (shell-quoted)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, not part of the names (repeatable)",
    )
    p.add_argument(
        "--wandb_spec", default=None, help="also write a W&B grid spec (YAML) of the selected runs"
    )
    return p


def _run(a) -> int:
    name, runs = load_sweep(a.sweep)
    runs = select(runs, a.only)
    if not runs:
        raise ValueError(f"no run of {a.sweep} matches --only={a.only!r}")
    extra = parse_sets(a.set)
    workdir = storage.resolved(a.workdir)
    validate.check_workdir(workdir)  # a URL orbax cannot write checkpoints to, before any run starts
    if not a.dry_run:
        validate.check_writable(workdir)
    if a.wandb_spec:
        path = wandb_sweep.write(wandb_sweep.spec(runs, name, a.workdir, extra), a.wandb_spec)
        print(f"wrote W&B grid spec of {len(runs)} runs to {path}", file=sys.stderr)
    todo = jobs(runs, a.workdir, name, extra, launcher=a.launcher, launcher_args=shlex.split(a.launcher_args))
    if a.dry_run:
        for job in todo:
            finished = runner.is_finished(job.workdir, job.steps)
            print(f"# finished, skipped: {job.name}" if finished else runner.shell_line(job.argv, job.env))
        return 0
    results = runner.run_jobs(todo, parallel=a.parallel, title=f"sweep {name} in {a.workdir}")
    print(runner.summary_table(results))
    return 0 if runner.all_done(results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_parsed(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
