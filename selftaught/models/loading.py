"""Load a causal LM and its tokenizer from a Hub id, a local folder or a `.gguf` file.

A GGUF file is dequantised by transformers on load; we then drop its quantizer so that the model
trains and saves like any full-precision model (safetensors, no `quantization_config`). A PEFT adapter
folder loads as its base model with the adapter applied (transformers does this); its tokenizer is the
base model's unless the folder holds its own. Callers check model arguments first (`models/check.py`);
a Hub id that still fails to load raises a `ModelArgumentError` with the Hub's own message. What selftaught
saves, it leaves readable like any other file (`restore_weights_mode`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from selftaught.models.check import ModelArgumentError, adapter_base, has_tokenizer, looks_like_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | None) -> torch.dtype | str:
    """Map a config string ("float32", "bfloat16", "float16", "auto") to what `from_pretrained` takes."""
    if name is None or name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[name]


def inference_device() -> torch.device:
    """Where a model that generates or scores runs: this process's accelerator (the GPU a launcher,
    CUDA_VISIBLE_DEVICES or a Ray actor gave it) when it has one, else the CPU. A Trainer places the
    models it trains itself; nothing else does, so every inference load goes through here."""
    return (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    )


def load_for_inference(
    name_or_path: str, dtype: str | None = None, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A model in eval mode on `inference_device()`; `dtype` None is the device's usual one: bfloat16 on an
    accelerator, float32 on a CPU (whose bf16 kernels need AVX512-BF16 or AMX, as vLLM's CPU backend's)."""
    model = load_model(name_or_path, dtype or inference_dtype(), trust_remote_code)
    return model.to(inference_device()).eval()


def inference_dtype() -> str:
    """The dtype an inference load takes when none is asked for: bfloat16 on an accelerator, else float32."""
    return "float32" if inference_device().type == "cpu" else "bfloat16"


def restore_weights_mode(folder: str | Path) -> None:
    """Give the folder's *.safetensors the mode every other new file gets: 0o666 less the umask.

    safetensors 0.8 writes through a temporary file created 0o600 and renames it into place (its issue
    #782), so a saved model would be readable by its writer alone (not by a serving user, a container or
    a colleague) while the config and tokenizer beside it are.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).glob("*.safetensors"):
        path.chmod(0o666 & ~umask)


def _source(name_or_path: str) -> tuple[str, dict]:
    """Split a model reference into what `from_pretrained` wants: (folder or Hub id, extra kwargs)."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        return str(path), {}
    return name_or_path, {}  # a Hub id: transformers resolves (and caches) it


def _from_hub(load, source: str, **kwargs):
    """`load(source, **kwargs)`; for a Hub id, the Hub's error (not found, offline, gated) as a
    `ModelArgumentError`: a readable message and exit 2 through the CLI, not a traceback."""
    try:
        return load(source, **kwargs)
    except OSError as err:
        if Path(source).expanduser().exists() or looks_like_path(source):
            raise
        raise ModelArgumentError(f"{source} could not be loaded from the Hugging Face Hub: {err}") from err


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (the EOS when the model has none) and left padding for generation."""
    folder = Path(name_or_path).expanduser()
    base = adapter_base(folder) if folder.is_dir() else None
    if base and not has_tokenizer(folder):  # a PEFT adapter saved without a tokenizer: its base's
        return load_tokenizer(base, trust_remote_code)
    source, extra = _source(name_or_path)
    tokenizer = _from_hub(AutoTokenizer.from_pretrained, source, trust_remote_code=trust_remote_code, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def context_length(name_or_path: str, trust_remote_code: bool = False) -> int | None:
    """The most tokens the model reads (its config's `max_position_embeddings`), read without loading it;
    None when its config does not say."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir() and (base := adapter_base(folder)):  # a PEFT adapter reads as far as its base
        return context_length(base, trust_remote_code)
    source, extra = _source(name_or_path)
    config = _from_hub(AutoConfig.from_pretrained, source, trust_remote_code=trust_remote_code, **extra)
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def load_model(
    name_or_path: str,
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A causal LM ready to train or to run; weights are read as safetensors only."""
    source, extra = _source(name_or_path)
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    model = _from_hub(
        AutoModelForCausalLM.from_pretrained,
        source,
        dtype=resolve_dtype(dtype),
        trust_remote_code=trust_remote_code,
        use_safetensors=None if "gguf_file" in extra else True,
        **extra,
    )
    if "gguf_file" in extra:
        forget_gguf_quantization(model)
    return model


def forget_gguf_quantization(model: PreTrainedModel) -> None:
    """Make a GGUF-loaded (already dequantised) model save and train as a plain model."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
