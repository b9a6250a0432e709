"""Model loading: GGUF files, local folders, Hub ids (resolved, not fetched), and the layer-cut student."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model
from transformers import AutoModelForCausalLM

from selftaught.evaluate.common import eval_engine
from selftaught.evaluate.config import MathEvalConfig
from selftaught.evaluate.results import recorded_settings
from selftaught.generation.base import EngineSettings
from selftaught.generation.engines import make_engine
from selftaught.models import load_for_inference, load_model, load_tokenizer
from selftaught.models.embedded import cache_dir, keep_decoder_layers, packaged_gguf
from selftaught.models.loading import _source


@pytest.mark.slow
def test_gguf_loads_dequantised_and_saves_as_plain_safetensors(tmp_path):
    model = load_model(str(packaged_gguf()))
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 30
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "quantization_config" not in saved
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    name, weight = next(iter(model.state_dict().items()))
    assert torch.equal(reloaded.state_dict()[name], weight)


def test_model_references_resolve_without_the_network(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert _source(str(gguf)) == (str(tmp_path), {"gguf_file": "m.gguf"})
    assert _source(str(tmp_path)) == (str(tmp_path), {})
    assert _source("Qwen/Qwen2-0.5B-Instruct") == ("Qwen/Qwen2-0.5B-Instruct", {})
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        _source(str(tmp_path / "missing.gguf"))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFTAUGHT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SELFTAUGHT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "selftaught"


def test_cut_student_keeps_the_chosen_layers_and_generates_with_its_cache(tmp_path, tokenizer_dir):
    folder = build_tiny_model(tmp_path / "four", tokenizer_dir, layers=4, seed=3)
    model = load_model(str(folder))
    third = model.model.layers[2].self_attn.q_proj.weight.clone()
    keep_decoder_layers(model, [0, 2])
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert torch.equal(model.model.layers[1].self_attn.q_proj.weight, third)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    tokenizer = load_tokenizer(str(folder))
    ids = torch.tensor([tokenizer("Hello there")["input_ids"]])
    cached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    uncached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_inference_loads_run_on_the_accelerator_in_its_usual_dtype(monkeypatch, tiny_teacher):
    """An engine's model on a GPU machine must run on the GPU (hf engines stayed on the CPU there); the
    `meta` device stands in for the accelerator this machine does not have."""
    model = load_for_inference(str(tiny_teacher))
    assert (model.device.type, model.dtype, model.training) == ("cpu", torch.float32, False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("meta"))
    engine = make_engine(EngineSettings(), str(tiny_teacher))
    assert (engine.model.device.type, engine.model.dtype) == ("meta", torch.bfloat16)
    assert load_for_inference(str(tiny_teacher), "float32").dtype == torch.float32  # asked for, kept


def test_evaluations_take_the_accelerators_dtype_unless_asked_and_record_it(monkeypatch, tiny_teacher):
    """`eval` (and the backtranslate evaluation, which builds the same configs) evaluated a GPU's 7B
    model in float32 (28 GB) when no --dtype was given; it now takes bfloat16 there, float32 on a CPU,
    and the result JSON records the dtype used, not `null`."""
    assert recorded_settings(MathEvalConfig())["dtype"] == "float32"
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("meta"))
    assert eval_engine(str(tiny_teacher), MathEvalConfig()).model.dtype == torch.bfloat16
    assert recorded_settings(MathEvalConfig())["dtype"] == "bfloat16"
    asked = MathEvalConfig(dtype="float32")
    assert eval_engine(str(tiny_teacher), asked).model.dtype == torch.float32
    assert recorded_settings(asked)["dtype"] == "float32"
