"""metrics.jsonl as one history per run: the reader skips a line cut short by a kill, and a resume from step s
keeps the records up to s (the step-s evaluation included) and moves the rest, cut lines too, aside."""

from __future__ import annotations

import json

from lax_pretrain.train.metrics import DISCARDED_FILE, METRICS_FILE, read_metrics, truncate_history


def write_lines(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


RECORDS = [
    {"step": 0, "eval_loss": 5.5, "params": 10},
    {"step": 10, "loss": 4.0},
    {"step": 20, "loss": 3.0},
    {"step": 20, "eval_loss": 3.1},  # the evaluation at the checkpoint step: written before its checkpoint
    {"step": 30, "loss": 2.0},
]


def test_reader_skips_a_final_line_cut_short(tmp_path):
    write_lines(tmp_path / METRICS_FILE, RECORDS, tail='{"step": 40, "lo')
    assert read_metrics(tmp_path) == RECORDS


def test_reader_without_a_file(tmp_path):
    assert read_metrics(tmp_path) == []


def test_resume_keeps_steps_up_to_the_checkpoint_and_moves_the_rest_aside(tmp_path):
    write_lines(tmp_path / METRICS_FILE, RECORDS, tail='{"step": 40, "lo')
    kept = truncate_history(tmp_path, 20)
    assert kept == RECORDS[:4]
    assert read_metrics(tmp_path) == RECORDS[:4]
    assert (tmp_path / METRICS_FILE).read_text().endswith("\n")  # the next record starts on its own line
    discarded = [json.loads(line) for line in (tmp_path / DISCARDED_FILE).read_text().splitlines()]
    assert [d.get("record") for d in discarded] == [RECORDS[4], None]
    assert discarded[1]["line"] == '{"step": 40, "lo'
    assert all(d["resumed_from_step"] == 20 for d in discarded)

    # A second kill and resume from the same checkpoint appends to the side file and keeps the same history.
    with (tmp_path / METRICS_FILE).open("a") as f:
        f.write(json.dumps({"step": 30, "loss": 2.0}) + "\n")
    assert truncate_history(tmp_path, 20) == RECORDS[:4]
    assert len((tmp_path / DISCARDED_FILE).read_text().splitlines()) == 3


def test_fresh_start_moves_everything_aside(tmp_path):
    """A run killed before its first checkpoint starts again at step 0 and writes step 0 again."""
    write_lines(tmp_path / METRICS_FILE, RECORDS[:2])
    assert truncate_history(tmp_path, 0) == []
    assert read_metrics(tmp_path) == []
    assert len((tmp_path / DISCARDED_FILE).read_text().splitlines()) == 2


def test_nothing_to_drop_leaves_the_file_alone(tmp_path):
    write_lines(tmp_path / METRICS_FILE, RECORDS)
    before = (tmp_path / METRICS_FILE).stat().st_mtime_ns
    assert truncate_history(tmp_path, 30) == RECORDS
    assert (tmp_path / METRICS_FILE).stat().st_mtime_ns == before
    assert not (tmp_path / DISCARDED_FILE).exists()
