"""bench/common.py: every benchmark result names the commit, command, machine and libraries behind it."""

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
