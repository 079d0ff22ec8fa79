"""The command lines (lax_pretrain/cli.py): importable `main(argv) -> int`, one-line errors, console scripts.

Every command is imported into this one process and its `main` called with a bad argument (the arguments
alone, or sys.argv-style with the program name first): it returns 2 and prints exactly one `error: ...` line
naming the offending key, or raises with `--verbose`. Two console
scripts of the installed package (`lax-params`, `lax-train`, next to sys.executable) run as subprocesses,
both started at once by a module fixture.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from lax_pretrain import params, quickstart, sample
from lax_pretrain.bench import cli as bench_cli
from lax_pretrain.convert import hf_llama
from lax_pretrain.train import __main__ as train_cli

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # console scripts live next to the venv's python
SCRIPTS = {
    "params": [BIN / "lax-params", "--config=configs/llama.py:nano"],
    "train_bad_kind": [BIN / "lax-train", "--config=configs/llama.py:nano,kind=foo", "--workdir={tmp}/run"],
}


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_tokenizer = _load_script("train_tokenizer")


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    """Config paths are relative to the repository; the train command sets logger levels, restored here."""
    monkeypatch.chdir(ROOT)
    levels = {name: logging.getLogger(name).level for name in ("absl", "lax_pretrain")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def script_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def scripts(script_dir) -> dict[str, subprocess.CompletedProcess]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")  # no attempt at a TPU, whose failure jax logs at INFO
    procs = {
        name: subprocess.Popen(
            [str(a).format(tmp=script_dir) for a in argv],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, argv in SCRIPTS.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# (main, argv, text the error line must hold, what --verbose raises)
BAD_CALLS = {
    "train_bad_kind": (
        train_cli.main,
        ["--config=configs/llama.py:nano,kind=foo", "--workdir={tmp}/run"],
        "model.proj.q.kind='foo' is not a registered factorization kind",
        ValueError,
    ),
    "train_missing_override_key": (
        train_cli.main,
        ["--config=configs/llama.py:nano", "--workdir={tmp}/run", "--config.model.d_modl=64"],
        "--config.model.d_modl: the config has no key 'd_modl' (did you mean 'd_model'?)",
        flags.Error,
    ),
    "train_missing_workdir": (train_cli.main, ["--config=configs/llama.py:nano"], "--workdir", flags.Error),
    "params_bad_compact_key": (
        params.main,
        ["--config=configs/llama.py:nano,knd=foo"],
        "'knd=foo'",
        flags.Error,
    ),
    "params_missing_file": (params.main, ["--config=configs/nope.py:nano"], "--config: ", flags.Error),
    "params_unknown_flag": (params.main, ["--config=configs/llama.py:nano", "--jsn"], "'jsn'", flags.Error),
    "params_program_name_first": (
        params.main,
        ["lax-params", "--config=configs/llama.py:nano", "extra"],
        "unexpected argument 'extra'",
        flags.Error,
    ),
    "sample_missing_workdir": (
        sample.main,
        ["--workdir={tmp}/none"],
        "--workdir must be a training run",
        FileNotFoundError,
    ),
    "quickstart_bad_steps": (quickstart.main, ["--steps=many"], "--steps=many", flags.Error),
    "convert_needs_flags": (hf_llama.main, ["import", "--out={tmp}/out"], "--hf_dir", ValueError),
    "convert_no_command": (
        hf_llama.main,
        ["--out={tmp}/out"],
        "expected one command, import or export",
        flags.Error,
    ),
    "convert_program_name_first": (
        hf_llama.main,
        ["lax-convert", "export", "--workdir={tmp}/none", "--out={tmp}/out"],
        "must be a training run or an import",
        FileNotFoundError,
    ),
    "bench_bad_widths": (
        bench_cli.main,
        ["--suite=layers", "--widths=64,wide", "--out={tmp}/bench"],
        "--widths=64,wide",
        ValueError,
    ),
    "tokenizer_needs_out": (train_tokenizer.main, ["--vocab_size=512"], "--out", flags.Error),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_argument_is_one_error_line_and_status_2(case, tmp_path, capsys):
    main, argv, expected, _ = BAD_CALLS[case]
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert expected in line, line
    assert "Traceback" not in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_verbose_raises_instead(case, tmp_path):
    main, argv, _, error = BAD_CALLS[case]
    with pytest.raises(error):
        main([a.format(tmp=tmp_path) for a in argv] + ["--verbose"])


def test_a_second_call_in_the_same_process_starts_afresh(capsys):
    """The override flags that config_flags defines while parsing are dropped after each call."""
    override = ["--config=configs/llama.py:nano", "--recipe", "--config.optim.lr=0.5"]
    assert params.main(override) == 0
    first = capsys.readouterr().out
    assert params.main(override) == 0
    assert capsys.readouterr().out == first
    row = next(line for line in first.splitlines() if line.startswith("optim.lr "))
    assert "0.5" in row and "command line" in row  # the override reached the config from argv, not sys.argv
    assert params.main(["--config=configs/llama.py:nano", "--recipe"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("optim.lr "))
    assert "command line" not in row


def test_help_prints_the_docstring_and_flags(capsys):
    assert params.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Parameter and FLOP accounting") and "--config" in out and "--[no]json" in out


def test_params_console_script_prints_the_table(scripts):
    run = scripts["params"]
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].split()[:2] == ["module", "kind"]
    assert any(line.startswith("total parameters") for line in run.stdout.splitlines())


def test_train_console_script_bad_config_is_one_line(scripts, script_dir):
    run = scripts["train_bad_kind"]
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        "error: model.proj.q.kind='foo' is not a registered factorization kind; choose one of dense, svd, cola, tt "
        "(or name the module that registers it with --import=MODULE)"
    ]
    assert run.stdout == ""
    assert not (script_dir / "run").exists()


# Refused before any dataset is built or any file is written: (config and overrides, text of the one line)
NANO = "--config=configs/llama.py:nano"
REFUSED_VALUES = {
    "bad_kind": ([f"{NANO},kind=foo"], "model.proj.q.kind='foo' is not a registered factorization kind"),
    "rank_above_full_rank": ([f"{NANO},kind=cola,rank=2000"], "rank=2000 exceeds min(d_in, d_out)=256"),
    "tt_bond_above_full_rank": ([f"{NANO},kind=tt,rank=100000"], "rank=100000 exceeds min(d_in, d_out)=256"),
    "nan_lr": ([NANO, "--config.optim.lr=nan"], "optim.lr=nan must be finite"),
    "negative_weight_decay": (
        [NANO, "--config.optim.weight_decay=-0.1"],
        "optim.weight_decay=-0.1 must be >= 0",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_VALUES))
def test_refused_value_builds_nothing_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    """As on a fresh machine: an empty data dir, which stays empty (no Shakespeare build before the error)."""
    argv, expected = REFUSED_VALUES[case]
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))
    assert train_cli.main([*argv, f"--workdir={tmp_path / 'run'}"]) == 2
    line = one_error_line(capsys)
    assert expected in line, line
    assert not any(data_dir.iterdir()) and not (tmp_path / "run").exists()


def test_a_damaged_config_json_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{\n  "model": ')
    assert sample.main([f"--workdir={tmp_path}"]) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path / 'config.json'} cannot be read as a run config" in line, line


def test_a_warm_up_as_long_as_the_run_is_allowed_with_one_warning(caplog):
    from lax_pretrain.config import from_compact
    from lax_pretrain.train.validate import check_optimizer

    optim = from_compact("llama", "nano").optim
    optim.warmup_steps = 10
    with caplog.at_level(logging.WARNING, logger="lax_pretrain"):
        check_optimizer(optim, steps=20)
        assert not caplog.records
        check_optimizer(optim, steps=10)  # smoke runs do this
    assert [r.getMessage() for r in caplog.records] == [
        "optim.warmup_steps=10 is not shorter than train.steps=10: the learning rate never reaches "
        f"optim.lr={optim.lr:g} and never decays"
    ]
