"""The model card must reload with huggingface_hub and say what was passed in, in the right places."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
from huggingface_hub import ModelCard

from selftaught.training.model_card import (
    CardContent,
    EvalRow,
    framework_versions,
    is_trained_model_row,
    render_model_card,
    write_model_card,
)

BIBTEX = """@inproceedings{agarwal2024onpolicy,
  title = {On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes},
  author = {Agarwal, Rishabh and others},
  booktitle = {ICLR},
  year = {2024}
}"""

HYPERPARAMETERS: dict[str, object] = {
    "learning_rate": 2e-05,
    "beta": 0.5,
    "lmbda": 1.0,
    "max_new_tokens": 256,
    "per_device_train_batch_size": 4,
    "gradient_checkpointing": True,
    "optim": "adamw_torch",
}


def make_content(**overrides) -> CardContent:
    results = [
        EvalRow("held-out distillation", "gsm8k-test", "forward_kl", "student (before)", 0.81234567),
        EvalRow("held-out distillation", "gsm8k-test", "forward_kl", "student (after)", 0.41234567),
        EvalRow("held-out distillation", "gsm8k-test", "forward_kl", "teacher", 0.0),
        EvalRow("math", "math500", "accuracy", "student (before)", 0.21),
        EvalRow("math", "math500", "accuracy", "student (after)", 0.3125),
        EvalRow("math", "math500", "accuracy", "teacher", 0.55),
    ]
    fields = dict(
        model_name="SmolLM2-135M-Instruct-10L-distilled",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        summary="A 10-layer student distilled on-policy from SmolLM2-135M-Instruct.",
        method="The student samples completions and is trained to match the teacher on them.",
        citations=[BIBTEX],
        hyperparameters=dict(HYPERPARAMETERS),
        data={"source": "openai/gsm8k", "splits": {"train": 7000, "test": 473}, "columns": ["prompt"]},
        results=results,
        tags=["distillation", "gkd"],
        datasets=["openai/gsm8k", "/tmp/local/prompts.jsonl"],
    )
    fields.update(overrides)
    return CardContent(**fields)


def section(text: str, title: str) -> str:
    """The body of one '## title' section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"section {title!r} missing"
    return match.group(1)


def metric_values(card: ModelCard) -> dict[tuple[str, str], float]:
    """(dataset, metric) -> value, read from the reloaded front matter's model-index."""
    (entry,) = card.data.to_dict()["model-index"]
    return {
        (res["dataset"]["name"], m["type"]): m["value"] for res in entry["results"] for m in res["metrics"]
    }


def test_front_matter_round_trips(tmp_path):
    content = make_content(license="apache-2.0")
    path = write_model_card(tmp_path / "out", content)
    assert path == tmp_path / "out" / "README.md"

    data = ModelCard.load(path).data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0"
    assert data["tags"] == ["selftaught", "distillation", "gkd"]
    assert data["datasets"] == ["openai/gsm8k"]  # the local path is body-only
    assert data["model-index"][0]["name"] == content.model_name


def test_model_index_holds_only_the_trained_model(tmp_path):
    card = ModelCard.load(write_model_card(tmp_path, make_content()))
    assert metric_values(card) == {
        ("gsm8k-test", "forward_kl"): pytest.approx(0.41234567),
        ("math500", "accuracy"): pytest.approx(0.3125),
    }


def test_trained_model_rule():
    def row(model: str) -> EvalRow:
        return EvalRow("t", "d", "m", model, 1.0)

    assert is_trained_model_row(row("student (after)"), "x")
    assert is_trained_model_row(row("student (after) @ step 500"), "x")
    assert is_trained_model_row(row("trained"), "x")
    assert is_trained_model_row(row("my-model"), "my-model")
    assert not is_trained_model_row(row("student (before)"), "x")
    assert not is_trained_model_row(row("teacher"), "x")
    assert not is_trained_model_row(row("student (afterwards)"), "x")


def test_front_matter_is_plain_yaml_for_numpy_values(tmp_path):
    np = pytest.importorskip("numpy")
    rows = [EvalRow("math", "math500", "accuracy", "trained", np.float64(0.625))]
    path = write_model_card(tmp_path, make_content(results=rows))
    assert "!!python" not in path.read_text()
    value = metric_values(ModelCard.load(path))[("math500", "accuracy")]
    assert type(value) is float and value == 0.625


def test_same_dataset_under_two_tasks_stays_two_entries(tmp_path):
    rows = [
        EvalRow("held-out distillation", "gsm8k-test", "forward_kl", "trained", 0.4),
        EvalRow("math", "gsm8k-test", "accuracy", "trained", 0.3),
    ]
    card = ModelCard.load(write_model_card(tmp_path, make_content(results=rows)))
    results = card.data.to_dict()["model-index"][0]["results"]
    assert sorted(r["task"]["name"] for r in results) == ["held-out distillation", "math"]


def test_no_trained_rows_means_no_model_index(tmp_path):
    rows = [EvalRow("math", "math500", "accuracy", "teacher", 0.5)]
    data = ModelCard.load(write_model_card(tmp_path, make_content(results=rows))).data.to_dict()
    assert "model-index" not in data
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_local_base_model_stays_out_of_front_matter(tmp_path):
    text = render_model_card(make_content(base_model=str(tmp_path)))
    assert "base_model" not in ModelCard(text).data.to_dict()
    assert f"`{tmp_path}`" in text


def test_every_hyperparameter_is_in_its_table():
    text = render_model_card(make_content())
    table = section(text, "Training hyper-parameters")
    for key, value in HYPERPARAMETERS.items():
        assert f"| {key} | {value} |" in table


def test_data_table_flattens_nested_values():
    table = section(render_model_card(make_content()), "Data")
    assert "| splits.train | 7000 |" in table
    assert "| splits.test | 473 |" in table
    assert "| columns | prompt |" in table


def test_evaluation_table_has_one_column_per_model():
    table = section(render_model_card(make_content()), "Evaluation").strip().splitlines()
    assert table[0] == "| Task | Dataset | Metric | student (before) | student (after) | teacher |"
    assert "| held-out distillation | gsm8k-test | forward_kl | 0.8123 | 0.4123 | 0 |" in table
    assert "| math | math500 | accuracy | 0.21 | 0.3125 | 0.55 |" in table
    assert len(table) == 4  # header, separator, two (task, dataset, metric) rows


def test_sections_in_order():
    content = make_content(extra_sections={"Limitations": "Small.", "Intended use": "Research."})
    text = render_model_card(content)
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert titles == [
        "Method",
        "Training hyper-parameters",
        "Data",
        "Evaluation",
        "Limitations",
        "Intended use",
        "Framework versions",
        "Citation",
    ]
    assert ModelCard(text).text.lstrip().startswith(f"# {content.model_name}\n\n{content.summary}")


def test_framework_versions_are_the_installed_ones():
    versions = framework_versions()
    assert versions["torch"] == importlib.metadata.version("torch")
    assert versions["transformers"] == importlib.metadata.version("transformers")
    listed = section(render_model_card(make_content()), "Framework versions")
    assert f"- torch: {versions['torch']}" in listed
    assert f"- transformers: {versions['transformers']}" in listed


def test_citation_is_a_bibtex_block():
    text = render_model_card(make_content())
    assert f"```bibtex\n{BIBTEX}\n```" in section(text, "Citation")
