"""`selftaught distill` with a teacher whose tokenizer differs from the student's, end to end through the CLI:
a tiny Gemma 3 (Gemma's real tokenizer) teaching a tiny Llama on SmolLM2's, and the real Gemma 3 270M GGUF."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from test_distill_e2e import distill, distill_argv, training_logs

from selftaught.cli import main
from selftaught.distill.cross_teacher import PATHS
from selftaught.models.embedded import packaged_gemma_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bare_gemma(tmp_path_factory, tiny_gemma) -> Path:
    """The tiny Gemma without a chat template, as the packaged base model's GGUF comes."""
    folder = tmp_path_factory.mktemp("bare_gemma") / "gemma"
    shutil.copytree(tiny_gemma, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def run(*argv: str) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        distill(*argv)
    return stdout.getvalue()


def test_a_teacher_with_another_tokenizer_and_no_chat_template_is_refused_naming_the_flag(
    tmp_path, tiny_student, bare_gemma, math_data, capsys
):
    with pytest.raises(SystemExit) as stopped:
        main(["distill", *distill_argv(tiny_student, bare_gemma, math_data, tmp_path / "out")])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--teacher_chat_template" in error
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_served_teacher_named_with_another_tokenizer_is_refused_before_any_weights_load(
    tmp_path, tiny_student, tiny_gemma, math_data, capsys
):
    """`--teacher_url` (and `--teacher_top_k`) with a `--teacher` whose tokenizer differs: the server would be
    sent the student's ids, so the run stops in one line saying to drop --teacher_url (no server is asked:
    nothing listens at this address)."""
    out = tmp_path / "out"
    served = ["--teacher_url", "http://127.0.0.1:9/v1", "--teacher_top_k", "8"]
    with pytest.raises(SystemExit) as stopped:
        main(["distill", *distill_argv(tiny_student, tiny_gemma, math_data, out, *served)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "tokenizer (262144 tokens) differs from the student's (49152)" in error
    assert "drop --teacher_url to load the teacher in this process" in error
    assert not (out / "metrics.jsonl").exists()


def test_a_teacher_with_another_tokenizer_trains_evaluates_per_byte_and_reports_its_loss_paths(
    tmp_path, tiny_student, bare_gemma, math_data
):
    out = tmp_path / "out"
    stdout = run(*distill_argv(tiny_student, bare_gemma, math_data, out, "--teacher_chat_template", "gemma3"))
    assert "[distill] alignment: byte offsets" in stdout
    assert (out / "model.safetensors").is_file()
    logs = training_logs(out)
    assert len(logs) == 2
    for log in logs:
        assert sum(log[f"{name}_share"] for name in PATHS) == pytest.approx(1.0)
        assert log["shared_support_share"] > 0.5
    results = json.loads((out / "eval_results.json").read_text())
    for model in ("teacher", "student_before", "student_after"):
        assert results[model]["nll_per_byte"] > 0
        assert "degenerate_share" in results[model]
    changes = {c["metric"]: c for c in results["comparisons"]}
    assert changes.keys() == {"nll_per_byte", "degenerate_share", "math_accuracy"}  # gold answers: accuracy
    low, high = changes["nll_per_byte"]["ci95"]
    assert low <= changes["nll_per_byte"]["difference"] <= high
    summary = results["cross_tokenizer"]
    assert summary["alignment"].startswith("byte offsets") and summary["fallback"] == "sampled_kl"
    assert sum(summary[f"{name}_share"] for name in PATHS) == pytest.approx(1.0)
    assert summary["completions"] == 4  # 2 steps of 2
    non_canonical = sum(log["non_canonical_share"] * 2 for log in logs)
    assert summary["non_canonical_completions"] == pytest.approx(non_canonical)
    card = (out / "README.md").read_text()
    assert "## Teacher with another tokenizer" in card and "Alignment: byte offsets" in card
    assert f"{summary['non_canonical_completions']} of the 4 completions were not" in card
    assert "nll_per_byte" in card


def test_a_resumed_cross_tokenizer_run_reports_the_loss_paths_of_the_whole_run(
    tmp_path, tiny_student, bare_gemma, math_data
):
    out = tmp_path / "out"
    argv = distill_argv(tiny_student, bare_gemma, math_data, out, "--teacher_chat_template", "gemma3")
    run(*argv)
    whole = json.loads((out / "eval_results.json").read_text())["cross_tokenizer"]

    run(*argv, "--resume_from_checkpoint", str(out / "checkpoint-1"))  # step 2 again, from step 1's state

    resumed = json.loads((out / "eval_results.json").read_text())["cross_tokenizer"]
    assert resumed["completions"] == whole["completions"] == 4
    assert resumed == whole  # the same samples (seeded per step), so the same counts and shares


def test_gemma_3_270m_gguf_teaches_a_smollm2_student_through_the_cli(tmp_path, tiny_student, math_data):
    """The issue's end-to-end run on the real teacher: the packaged base model's GGUF, given Gemma 3's chat
    template, two on-policy steps into a student on SmolLM2's tokenizer, which is written out."""
    out = tmp_path / "out"
    argv = distill_argv(
        tiny_student, packaged_gemma_gguf(), math_data, out, "--teacher_chat_template", "gemma3"
    )
    stdout = run(*argv, "--lmbda", "1.0")
    assert "[distill] alignment: byte offsets: the teacher's tokenizer (262144 tokens)" in stdout
    assert (out / "model.safetensors").is_file()
    assert len(training_logs(out)) == 2
    results = json.loads((out / "eval_results.json").read_text())
    assert results["teacher"]["nll_per_byte"] > 0 and results["student_after"]["nll_per_byte"] > 0
