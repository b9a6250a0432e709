"""bench/common.py: every benchmark result names the commit, command, machine and libraries behind it, and
benches that compare speeds alternate what they compare and report each ratio over the rounds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)


def test_a_result_records_how_to_reproduce_it_and_no_path_of_this_machine(tmp_path, monkeypatch):
    output = tmp_path / "result.json"
    data = ROOT / "bench" / "data" / "curation_dev.jsonl"
    argv = [str(ROOT / "bench" / "curation.py"), "--output", str(output), f"--data={data}", "--limit", "4"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common.write_result(output, {"results": {"auc": 0.9}})

    text = output.read_text()
    result = json.loads(text)
    assert list(result) == ["provenance", "results"] and result["results"] == {"auc": 0.9}
    provenance = result["provenance"]
    command = provenance["command"]
    assert command.startswith("OMP_NUM_THREADS=1 ")
    assert command.endswith(
        " bench/curation.py --output .../result.json --data=bench/data/curation_dev.jsonl --limit 4"
    )
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert provenance["commit"] == head.stdout.strip() and isinstance(provenance["dirty"], bool)
    assert provenance["machine"]["cores"] == os.cpu_count() and provenance["machine"]["cpu"]
    assert provenance["libraries"]["torch"] == torch.__version__
    assert {"python", "transformers", "trl"} <= set(provenance["libraries"])
    assert str(ROOT) not in text and str(tmp_path) not in text and sys.executable not in text


def test_a_resumed_result_names_this_run_and_keeps_the_runs_before_it(tmp_path, monkeypatch):
    output = tmp_path / "result.json"
    first = {"command": "python bench/x.py --seeds 1", "commit": "a" * 40}
    resumed = {"provenance": first, "runs": {"seed0": 1.0, "seed1": 2.0}}
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "x.py"), "--seeds", "2"])
    common.write_result(output, resumed)

    result = json.loads(output.read_text())
    assert result["provenance"]["command"].endswith("bench/x.py --seeds 2")
    assert result["earlier_runs"] == [first] and result["runs"] == {"seed0": 1.0, "seed1": 2.0}
    common.write_result(output, result)  # resumed once more: both earlier runs, oldest first
    assert json.loads(output.read_text())["earlier_runs"] == [first, result["provenance"]]


def test_compared_runs_alternate_round_after_round_with_the_reference_timed_around_each_round():
    events = []

    def run(name: str, round_index: int) -> str:
        events.append(f"{name}{round_index}")
        return f"{name} in round {round_index}"

    def reference() -> float:
        events.append("reference")
        return float(events.count("reference"))

    rounds, timings = common.interleave(["A", "B"], 3, run, reference)

    assert events == ["reference", "A0", "B0", "reference", "A1", "B1", "reference", "A2", "B2", "reference"]
    assert rounds == [{"A": f"A in round {i}", "B": f"B in round {i}"} for i in range(3)]
    assert timings == [1.0, 2.0, 3.0, 4.0]


def test_each_ratio_is_the_median_and_range_of_the_rounds_that_have_it():
    per_round = [{"a_vs_b": 1.0, "a_vs_floor": 2.0}, {"a_vs_b": 3.0}, {"a_vs_b": 1.5, "a_vs_floor": 4.0}]

    summary = common.spreads(per_round)

    assert summary == {
        "a_vs_b": {"median": 1.5, "min": 1.0, "max": 3.0, "n": 3},
        "a_vs_floor": {"median": 3.0, "min": 2.0, "max": 4.0, "n": 2},  # even count: mean of the middle two
    }
    assert common.median_range(summary["a_vs_b"]) == "1.50 [1.00-3.00]"
    assert common.median_range(common.spread([1.234]), unit=" s") == "1.23 s"


def test_the_drift_compares_the_last_reference_timing_with_the_first():
    drifted = common.drift([2.0, 1.0, 3.0])

    assert drifted["end_over_start"] == 1.5
    assert (drifted["min"], drifted["max"], drifted["n"], drifted["seconds"]) == (
        1.0,
        3.0,
        3,
        [2.0, 1.0, 3.0],
    )


def test_appending_rounds_of_another_configuration_is_refused_in_one_line(tmp_path):
    output = tmp_path / "distill.json"
    output.write_text(json.dumps({"config": {"steps": 5}, "rounds": [], "drift": {"seconds": [1.0]}}))
    script = ROOT / "bench" / "distill_throughput.py"

    run = subprocess.run(
        [sys.executable, str(script), "--append", "--output", str(output)], capture_output=True, text=True
    )

    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"--append: {output} holds no rounds of this configuration; give the same --steps, --max-new-tokens,"
        " --batch-size and --grad-accum as its run, or another --output"
    ]
    assert json.loads(output.read_text())["config"] == {"steps": 5}  # untouched
