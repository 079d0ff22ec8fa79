"""Tests of the parameter/FLOP accounting command line: `python -m lax_pretrain.params --config=... [--json]`.

Each command runs as a real subprocess (sys.executable, from the repository root found from this file); all
of them are started at once by a module fixture, so the file costs about one jax start-up. Their output is
compared with `model_stats` computed in this process (exactly) and with docs/methods.md section 4
(within 0.5%).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lax_pretrain.config import llama_config
from lax_pretrain.models.llama import PROJECTIONS as LLAMA_PROJ
from lax_pretrain.models.stats import model_stats

pytestmark = pytest.mark.slow  # the command line in subprocesses: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "llama_json": ["--config=configs/llama.py:60m,kind=cola", "--json"],
    "llama_table": ["--config=configs/llama.py:60m,kind=cola,lax=kron"],
    "bad_rank": ["--config=configs/llama.py:60m,kind=cola", "--config.model.proj.q.rank=0"],
}
# A table row: module, kind, blocks, params, LaX params, GFLOPs/token.
ROW = re.compile(r"^(\w+)\s+(\w+)\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)$")


@pytest.fixture(scope="module")
def cli() -> dict[str, subprocess.CompletedProcess]:
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "lax_pretrain.params", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in COMMANDS.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def stats_of(config):
    return model_stats(config.model, config.data.get("seq_len", 256))


def table_rows(stdout: str) -> list[tuple]:
    return [m.groups() for line in stdout.splitlines() if (m := ROW.match(line.strip()))]


def total_line(stdout: str, label: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith(label))
    return int(line[len(label) :].split()[0].replace(",", ""))


def test_json_is_one_object_matching_model_stats(cli):
    run = cli["llama_json"]
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)  # the whole of stdout is one JSON document
    assert isinstance(payload, dict)
    assert abs(payload["total_params"] / 1e6 - 42.77) <= 0.005 * 42.77, payload["total_params"]
    expected = stats_of(llama_config("60m", kind="cola"))
    assert payload == json.loads(json.dumps(expected.to_json()))
    assert [r["name"] for r in payload["rows"]] == list(LLAMA_PROJ)
    assert payload["train_flops_per_token"] == 3 * payload["flops_per_token"]
    assert payload["lax_params"] == 0


def test_table_lists_every_projection(cli):
    """60M CoLA + LaX: 42.77M + (8 - 1) blocks x 7 projections x (kron 8^2 + 16^2, LayerNorm 2 x 128)."""
    run = cli["llama_table"]
    assert run.returncode == 0, run.stderr
    expected = stats_of(llama_config("60m", kind="cola", lax="kron"))
    target_m = 42.77 + 7 * 7 * (8**2 + 16**2 + 2 * 128) / 1e6
    rows = table_rows(run.stdout)
    assert [r[0] for r in rows] == list(LLAMA_PROJ)
    for (module, kind, count, params, lax, _), row in zip(rows, expected.rows):
        assert (kind, int(count)) == ("cola", 8), module
        assert int(params.replace(",", "")) == row.params, module
        # Blocks 1..L-1 carry a gate and a latent norm.
        assert int(lax.replace(",", "")) == row.lax_params > 0, module
    total = total_line(run.stdout, "total parameters")
    assert total == expected.total_params
    assert abs(total / 1e6 - target_m) <= 0.005 * target_m
    assert total_line(run.stdout, "non-embedding parameters") == expected.non_embedding_params
    assert total_line(run.stdout, "LaX overhead") == expected.lax_params
    assert expected.lax_params == sum(r.lax_params for r in expected.rows)


def test_bad_override_names_the_key(cli):
    """One line, no traceback, exit status 2 (lax_pretrain/cli.py)."""
    run = cli["bad_rank"]
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.proj.q.rank" in lines[0], run.stderr
