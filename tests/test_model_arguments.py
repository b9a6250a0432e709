"""Every flag naming a model is checked before anything loads: a named error and exit 2, not a traceback.

The cases are the ones a new user hits (a file named .gguf that is not one, a GGUF of a version the reader
does not handle, an empty .gguf, a path that does not exist, safetensors cut off mid-download), each
through every entry point: distill, the four `eval` commands, backtranslate and the generation bench.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import selftaught.models.check as check
from selftaught.cli import main
from selftaught.models import load_model, load_tokenizer
from selftaught.models.check import ModelArgumentError, check_model_argument

ROOT = Path(__file__).resolve().parent.parent


def write_gguf(path: Path, architecture: str = "llama", version: int | None = None) -> Path:
    """A small real GGUF (one tensor); `version` overwrites the version field after the magic."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if version is not None:
        data = bytearray(path.read_bytes())
        data[4:8] = struct.pack("<I", version)
        path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="session")
def bad_models(tmp_path_factory, tiny_student) -> dict[str, tuple[str, str]]:
    """{case: (model argument, words its error must contain)}."""
    root = tmp_path_factory.mktemp("bad_models")
    (root / "not-a-model.gguf").write_text('{"problem": "1+1?"}\n')
    (root / "empty.gguf").write_bytes(b"")
    truncated = root / "truncated"
    shutil.copytree(tiny_student, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {
        "not a GGUF": (str(root / "not-a-model.gguf"), "not a GGUF file: it starts with b'{\"pr'"),
        "unsupported GGUF version": (
            str(write_gguf(root / "v9.gguf", version=9)),
            "GGUF version 9, but the installed gguf reader handles versions [2, 3]",
        ),
        "empty .gguf": (str(root / "empty.gguf"), "the file is empty (0 bytes)"),
        "missing local path": ("./no/such/model", "no such file or folder"),
        "truncated safetensors": (str(truncated), "truncated safetensors file: its "),
    }


# argv of each entry point: BAD is the model argument under test, GOOD a real tiny model, RUN a folder.
ENTRY_POINTS = {
    "distill --student": ["distill", "--student", "BAD", "--teacher", "GOOD", "--output_dir", "RUN/out"],
    "distill --teacher": ["distill", "--student", "GOOD", "--teacher", "BAD", "--output_dir", "RUN/out"],
    "eval math --model": ["eval", "math", "--model", "BAD", "--data", "d.jsonl", "--output_dir", "RUN/out"],
    "eval judge --model": ["eval", "judge", "--model", "BAD", "--baseline", "GOOD", "--judge", "GOOD"],
    "eval judge --baseline": ["eval", "judge", "--model", "GOOD", "--baseline", "BAD", "--judge", "GOOD"],
    "eval judge --judge": ["eval", "judge", "--model", "GOOD", "--baseline", "GOOD", "--judge", "BAD"],
    "eval curation --model": ["eval", "curation", "--model", "BAD", "--data", "d.jsonl"],
    "eval distance --student": ["eval", "distance", "--student", "BAD", "--teacher", "GOOD"],
    "eval distance --teacher": ["eval", "distance", "--student", "GOOD", "--teacher", "BAD"],
    "backtranslate train-seed --base_model": [
        "backtranslate", "train-seed", "--run_dir", "RUN/run", "--base_model", "BAD"
    ],
}  # fmt: skip
CASES = (
    "not a GGUF",
    "unsupported GGUF version",
    "empty .gguf",
    "missing local path",
    "truncated safetensors",
)


def entry_argv(entry: str, bad: str, good: str, run: Path) -> list[str]:
    replace = {"BAD": bad, "GOOD": good}
    return [replace.get(arg, arg.replace("RUN", str(run))) for arg in ENTRY_POINTS[entry]]


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory) -> Path:
    """A backtranslation run folder whose seed stage is done: train-seed reads it before the model."""
    tmp = tmp_path_factory.mktemp("bt")
    main(["backtranslate", "seed", "--run_dir", str(tmp / "run"), "--seed_size", "8"])
    return tmp


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES)
def test_a_bad_model_argument_is_a_named_error_and_exit_2(
    case, entry, bad_models, tiny_student, seeded_run, capsys, monkeypatch
):
    loads = []  # a spy, not a stand-in: nothing may reach the loaders
    for loader in ("AutoModelForCausalLM", "AutoTokenizer"):
        monkeypatch.setattr(f"transformers.{loader}.from_pretrained", lambda *a, **k: loads.append(a))
    value, expected = bad_models[case]
    argv = entry_argv(entry, value, str(tiny_student), seeded_run)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    flag = entry.split()[-1]
    assert f"error: {flag} " in err and expected in err
    assert value.lstrip("./") in err  # names what was given
    assert "Traceback" not in err and loads == []  # before any model loads


def test_the_generation_bench_refuses_a_bad_model_before_measuring(bad_models):
    value, expected = bad_models["truncated safetensors"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "generation.py"), "--model", value],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "--model" in result.stderr and expected in result.stderr
    assert "measuring" not in result.stdout


# --- what each check accepts and refuses, one case at a time ---------------------------------------------


def test_a_real_model_folder_gguf_and_adapter_pass(tmp_path, tiny_student):
    assert check_model_argument(str(tiny_student), "--model") == "folder"
    assert check_model_argument(str(write_gguf(tmp_path / "tiny.gguf")), "--model") == "gguf"


def test_a_gguf_architecture_transformers_cannot_load_is_named(tmp_path):
    with pytest.raises(ModelArgumentError, match="architecture 'bert', which transformers cannot load"):
        check_model_argument(str(write_gguf(tmp_path / "bert.gguf", "bert")), "--model")


def test_a_truncated_gguf_names_the_bytes_missing(tmp_path):
    path = write_gguf(tmp_path / "cut.gguf")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelArgumentError, match=r"truncated GGUF file: its tensors need \d+ bytes"):
        check_model_argument(str(path), "--model")


def test_a_gguf_without_its_suffix_is_told_to_rename(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(write_gguf(tmp_path / "m.gguf").read_bytes())
    with pytest.raises(ModelArgumentError, match="rename it to end in .gguf"):
        check_model_argument(str(path), "--model")


def test_a_data_file_is_not_a_model(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"problem": "1+1?"}\n')
    with pytest.raises(ModelArgumentError, match="a file that is not a model"):
        check_model_argument(str(path), "--model")


def test_a_folder_without_config_lists_what_it_holds_and_points_at_a_gguf_inside(tmp_path):
    write_gguf(tmp_path / "inside.gguf")
    with pytest.raises(ModelArgumentError, match=r"found a folder holding inside.gguf; .* pass the file"):
        check_model_argument(str(tmp_path), "--model")


def test_pickled_weights_only_are_refused_with_the_reason(tmp_path, tiny_student):
    folder = tmp_path / "bin"
    shutil.copytree(tiny_student, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelArgumentError, match="only pickled PyTorch weights"):
        check_model_argument(str(folder), "--model")


def test_a_missing_shard_is_named(tmp_path, tiny_student):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_student, folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelArgumentError, match="1 of the 2 weight shards .* missing"):
        check_model_argument(str(folder), "--model")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(ModelArgumentError, match="00002-of-00002.safetensors: truncated safetensors"):
        check_model_argument(str(folder), "--model")


def test_a_tokenizer_only_folder_serves_an_openai_engine_but_not_a_local_model(tmp_path, tokenizer_dir):
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    assert check_model_argument(str(folder), "--model", weights=False) == "folder"
    with pytest.raises(ModelArgumentError, match="not a model folder: expected config.json"):
        check_model_argument(str(folder), "--model")
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelArgumentError, match="no weights"):
        check_model_argument(str(folder), "--model")


def test_a_peft_adapter_folder_loads_with_its_base_tokenizer(tmp_path, tiny_student):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(load_model(str(tiny_student)), lora).save_pretrained(adapter)
    assert check_model_argument(str(adapter), "--model") == "adapter"
    model = load_model(str(adapter))
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert load_tokenizer(str(adapter)).get_vocab() == load_tokenizer(str(tiny_student)).get_vocab()
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "./gone"}))
    with pytest.raises(ModelArgumentError, match=r"the base model of adapter .*: no such file or folder"):
        check_model_argument(str(adapter), "--model")


@pytest.mark.parametrize("value", ["/abs/missing", "~/missing", "../missing", "a/b/c", "C:\\models\\m"])
def test_strings_that_look_like_paths_must_exist(value):
    with pytest.raises(ModelArgumentError, match="no such file or folder"):
        check_model_argument(value, "--model")


def test_hub_ids_pass_unchanged_online_and_must_be_cached_offline(monkeypatch):
    monkeypatch.setattr(check, "is_offline_mode", lambda: False)
    assert check_model_argument("Qwen/Qwen2-0.5B-Instruct", "--model") == "hub"
    assert check_model_argument("gpt2", "--model") == "hub"
    with pytest.raises(ModelArgumentError, match="neither an existing file or folder nor a Hub id"):
        check_model_argument("not a -- model!", "--model")
    monkeypatch.setattr(check, "is_offline_mode", lambda: True)
    with pytest.raises(ModelArgumentError, match="not in the local Hugging Face cache while HF_HUB_OFFLINE"):
        check_model_argument("Qwen/Qwen2-0.5B-Instruct", "--model")


def test_the_hubs_own_error_is_made_readable():
    with pytest.raises(ModelArgumentError, match="could not be loaded from the Hugging Face Hub"):
        load_tokenizer("selftaught-tests/no-such-model")
