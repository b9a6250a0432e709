"""Supervised fine-tuning shared by the backtranslation recipe: M0, the backward model Myx, and M(k+1).

A thin layer over TRL's `SFTTrainer`. Each example is a *conversational prompt-completion* pair:

    {"prompt": [{"role": "system", "content": tag}, {"role": "user", "content": instruction}],
     "completion": [{"role": "assistant", "content": response}]}

For such data TRL (1.16) computes the loss on the completion only: `SFTConfig.completion_only_loss`
defaults to None, which means "on" for prompt-completion data. While preparing the dataset it renders
the prompt alone (with the generation prompt, e.g. "<|im_start|>assistant\\n") and prompt + completion
through the chat template, marks every token after their common prefix as completion, and writes
`labels` with -100 on all other tokens. The collator then pads `labels` with -100 by position, not by
comparing ids to the pad id, so the completion's end-of-turn token ("<|im_end|>" for SmolLM2, whose
pad == eos) stays in the loss and the model learns to stop; `tests/test_sft.py` checks this.

The Humpback paper's settings (Li et al. 2023, section 4.1) are the defaults of `SFTSettings`:
learning rate 1e-5 decaying linearly to 9e-6, weight decay 0.1, dropout 0.1, and batch size 32
(8 under 3,000 examples; the batch is per_device_train_batch_size x gradient_accumulation_steps x GPUs).

Resuming: a run writes checkpoints into `output_dir`; a rerun continues from the newest complete one
(`training.checkpoints`), and once the final model is saved a marker file (`sft_complete.json`, written
last) makes any rerun return at once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer

from selftaught.arguments import ArgumentError, check_at_least, check_training_length
from selftaught.data.loading import DataError
from selftaught.models import load_model, load_tokenizer, restore_weights_mode
from selftaught.training.callbacks import (
    MetricsFileCallback,
    quiet_tied_weights_on_resume,
    replace_progress_bar,
)
from selftaught.training.checkpoints import CompleteCheckpoints, last_complete_checkpoint, stops_cleanly

# Written into output_dir after the final model, so its presence means "this run is finished".
COMPLETE_MARKER = "sft_complete.json"

# Dropout probabilities a model config may declare (Llama/Qwen2/Mistral: attention_dropout only;
# GPT-2/Phi: attn_pdrop, resid_pdrop, embd_pdrop; OPT: dropout, activation_dropout; Falcon:
# hidden_dropout). Those present are set to `SFTSettings.dropout`.
DROPOUT_FIELDS = (
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "activation_dropout",
    "attn_pdrop",
    "resid_pdrop",
    "embd_pdrop",
)


@dataclass
class SFTSettings:
    """Hyper-parameters of one supervised fine-tuning run; defaults follow the Humpback paper."""

    # Peak learning rate, used from the first step (no warmup; the paper gives none).
    learning_rate: float = 1e-5
    # The learning rate reached at the last step, decaying linearly from `learning_rate`. Implemented
    # with transformers' "polynomial" schedule with power=1 and lr_end=final_learning_rate (its
    # "linear" schedule decays to 0); equal to `learning_rate` means a constant schedule.
    final_learning_rate: float = 9e-6
    # AdamW weight decay.
    weight_decay: float = 0.1
    # Dropout probability while training, set on every dropout field of the model config that exists
    # (see DROPOUT_FIELDS; Llama-family models have only `attention_dropout`, on the attention
    # probabilities) and on the modules built from them. The saved model keeps the base's values.
    dropout: float = 0.1
    # Sequences per device per forward pass.
    per_device_train_batch_size: int = 8
    # Forward passes per optimizer step: the batch is per_device x this x number of devices. The
    # paper uses 32 (8 when there are fewer than 3,000 examples).
    gradient_accumulation_steps: int = 1
    # Passes over the examples (ignored when max_steps > 0).
    num_train_epochs: float = 1.0
    # Optimizer steps to train for; -1 derives them from num_train_epochs.
    max_steps: int = -1
    # Longest prompt + completion in tokens; longer ones are cut at the end, and an example left with
    # no completion token is dropped.
    max_length: int = 1024
    # Weights are loaded in this dtype ("float32", "bfloat16", "float16" or "auto").
    model_dtype: str = "float32"
    # bfloat16 autocast (mixed precision) on top of the loaded weights.
    bf16: bool = False
    # Recompute activations in the backward pass: less memory, about 20% slower.
    gradient_checkpointing: bool = False
    # Train LoRA adapters instead of all weights; they are merged into the model before saving.
    use_peft: bool = False
    # LoRA rank.
    lora_r: int = 16
    # LoRA scaling alpha (the update is scaled by lora_alpha / lora_r).
    lora_alpha: int = 32
    # Dropout on the LoRA path (independent of `dropout`).
    lora_dropout: float = 0.05
    # Modules given adapters, peft's names, comma-separated ("all-linear": every linear layer but the head).
    lora_target_modules: str = "all-linear"
    # Chat template for a base model without one: a tokenizer folder / Hub id, or a .jinja file
    # (TRL's SFTConfig.chat_template_path; cloning a tokenizer's template may add tokens).
    chat_template_path: str | None = None
    # Seed for data order, dropout and LoRA initialisation.
    seed: int = 0
    # Optimizer steps between two logs (metrics.jsonl and the progress bar).
    logging_steps: int = 1
    # Optimizer steps between two checkpoints (what a rerun resumes from).
    save_steps: int = 500
    # Checkpoints kept on disk while training (older ones are deleted); resuming needs only the last.
    save_total_limit: int = 1
    # Keep the checkpoint-* folders once the final model is saved (they hold optimizer states: large).
    keep_checkpoints: bool = False
    # Where the trainer also reports metrics: "none", "tensorboard", "wandb", ...
    report_to: str = "none"

    def __post_init__(self) -> None:
        if not 0 < self.final_learning_rate <= self.learning_rate:
            raise ArgumentError(
                f"--final_learning_rate must be in (0, --learning_rate {self.learning_rate}], "
                f"got {self.final_learning_rate}"
            )
        if not 0 <= self.dropout < 1:
            raise ArgumentError(f"--dropout must lie in [0, 1), got {self.dropout}")
        check_at_least(
            self,
            {
                "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 1,
                "max_length": 1,
                "logging_steps": 1,
                "save_steps": 1,
                "save_total_limit": 1,
                "lora_r": 1,
            },
        )
        check_training_length(self.max_steps, self.num_train_epochs)

    def lr_schedule(self) -> dict:
        """The SFTConfig fields for a linear decay from `learning_rate` to `final_learning_rate`."""
        if self.final_learning_rate == self.learning_rate:
            return {"lr_scheduler_type": "constant"}
        return {
            "lr_scheduler_type": "polynomial",
            "lr_scheduler_kwargs": {"lr_end": self.final_learning_rate, "power": 1.0},
            "warmup_steps": 0,
        }


def sft_example(instruction: str, response: str, system: str | None = None) -> dict:
    """One conversational prompt-completion example; `system` is e.g. Humpback's tag.

    Without `system`, the chat template decides: SmolLM2's inserts its own default system prompt.
    """
    prompt = [{"role": "system", "content": system}] if system is not None else []
    prompt.append({"role": "user", "content": instruction})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": response}]}


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def apply_dropout(model: PreTrainedModel, p: float) -> dict[str, float]:
    """Set dropout `p` in the config fields of DROPOUT_FIELDS that exist and in the live modules.

    Modules copy these values when they are built (e.g. LlamaAttention.attention_dropout), so the
    modules are updated too: every nn.Dropout, and every module attribute named like a config field.
    Returns the config's original values, to put back before saving.
    """
    config = model.config.get_text_config()
    original = {
        name: getattr(config, name) for name in DROPOUT_FIELDS if is_number(getattr(config, name, None))
    }
    for name in original:
        setattr(config, name, p)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        for name in original:
            if is_number(getattr(module, name, None)):
                setattr(module, name, p)
    return original


def sft_config(output_dir: str | Path, settings: SFTSettings) -> SFTConfig:
    """TRL's SFTConfig for `settings` (TRL's own defaults for everything not listed)."""
    return SFTConfig(
        output_dir=str(output_dir),
        learning_rate=settings.learning_rate,
        **settings.lr_schedule(),
        weight_decay=settings.weight_decay,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        max_length=settings.max_length,
        completion_only_loss=True,  # TRL's default for prompt-completion data; explicit, as we rely on it
        bf16=settings.bf16,  # TRL's default (None) would mean bf16 on
        gradient_checkpointing=settings.gradient_checkpointing,  # TRL's default is on
        chat_template_path=settings.chat_template_path,
        seed=settings.seed,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        report_to=settings.report_to,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator; warns without
    )


def lora_config(settings: SFTSettings) -> LoraConfig:
    targets = settings.lora_target_modules
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets.split(",") if "," in targets else targets,
        task_type="CAUSAL_LM",
    )


class CardlessSFTTrainer(CompleteCheckpoints, SFTTrainer):
    """TRL's SFTTrainer minus the generic README.md it writes at each checkpoint (callers write the card)."""

    def create_model_card(self, *args, **kwargs) -> None:
        pass


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[dict],
    output_dir: str | Path,
    settings: SFTSettings,
    callbacks: list[TrainerCallback] | None = None,
) -> CardlessSFTTrainer:
    """An SFTTrainer on `examples` (see `sft_example`), writing metrics.jsonl into output_dir."""
    if not examples:
        raise ValueError("no examples to train on")
    if tokenizer.chat_template is None and settings.chat_template_path is None:
        raise ValueError(
            "the tokenizer has no chat template: set SFTSettings.chat_template_path (a tokenizer folder, "
            "Hub id or .jinja file) to give the base model one"
        )
    trainer = CardlessSFTTrainer(
        model=model,
        args=sft_config(output_dir, settings),
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=lora_config(settings) if settings.use_peft else None,
        callbacks=[MetricsFileCallback(Path(output_dir) / "metrics.jsonl"), *(callbacks or [])],
    )
    replace_progress_bar(trainer)
    quiet_tied_weights_on_resume(trainer)
    return trainer


def is_complete(output_dir: str | Path) -> bool:
    """Whether `output_dir` holds a finished run (its marker is written after the final model)."""
    return (Path(output_dir) / COMPLETE_MARKER).is_file()


def save_final_model(trainer: Trainer, out: Path, merge_lora: bool) -> None:
    """Save one plain Hugging Face folder (safetensors, config, tokenizer + chat template), on any launch.

    LoRA adapters are merged first. Under FSDP, checkpoints may be sharded (fast to write and to
    resume), but transformers saves no final model from a sharded state dict: gather it in full.
    """
    if merge_lora:
        trainer.model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
    restore_weights_mode(out)


def train_sft(
    base_model: str,
    examples: list[dict],
    output_dir: str | Path,
    settings: SFTSettings,
    resume: bool = True,
    trust_remote_code: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Fine-tune `base_model` (Hub id, folder or .gguf) on `examples`; the model is saved to output_dir.

    Returns output_dir at once when it already holds a finished run. With `resume`, training continues
    from the newest checkpoint in output_dir. `callbacks` are extra transformers TrainerCallbacks.
    The model card is the caller's to write.
    """
    out = Path(output_dir)
    if is_complete(out):
        return out

    tokenizer = load_tokenizer(base_model, trust_remote_code)
    model = load_model(base_model, settings.model_dtype, trust_remote_code)
    base_dropout = apply_dropout(model, settings.dropout)
    trainer = build_trainer(model, tokenizer, examples, out, settings, callbacks)
    if len(trainer.train_dataset) == 0:  # TRL drops an example whose answer truncation cut off entirely
        raise DataError(
            f"none of the {len(examples)} training examples has an answer token within --max_length "
            f"{settings.max_length} (each prompt alone fills it): raise --max_length"
        )
    checkpoint = last_complete_checkpoint(out) if resume else None
    with stops_cleanly(trainer):  # rerun as it was, it resumes
        result = trainer.train(resume_from_checkpoint=checkpoint)

    for name, value in base_dropout.items():
        setattr(trainer.model.config.get_text_config(), name, value)
    save_final_model(trainer, out, settings.use_peft)

    if trainer.accelerator.is_main_process:
        record = {
            "base_model": base_model,
            "num_examples": len(examples),
            "resumed_from": checkpoint,
            "settings": asdict(settings),
            "train": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        }
        (out / COMPLETE_MARKER).write_text(json.dumps(record, indent=2) + "\n")
        if not settings.keep_checkpoints:
            for folder in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(folder, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return out
