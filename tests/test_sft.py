"""The supervised fine-tuning engine on a tiny random Llama with SmolLM2's tokenizer and chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from selftaught.models import load_model
from selftaught.training import sft
from selftaught.training.sft import (
    COMPLETE_MARKER,
    SFTSettings,
    apply_dropout,
    build_trainer,
    sft_example,
    train_sft,
)

SEED_TAG = "Answer in the style of an AI Assistant."
WEB_TAG = "Answer with knowledge from web search."
EXAMPLES = [
    sft_example("What is 2 + 2?", "2 + 2 = 4.", SEED_TAG),
    sft_example("Name a colour.", "Blue is a colour.", WEB_TAG),
    sft_example("Say hello.", "Hello! How can I help you today?", SEED_TAG),
    sft_example("Count to three.", "One, two, three.", WEB_TAG),
]
# Large enough for 3 steps to move a tiny random model; the decay 2:1 keeps the schedule visible.
FAST = dict(learning_rate=1e-2, final_learning_rate=5e-3, per_device_train_batch_size=2, logging_steps=1)


@pytest.fixture(scope="module")
def trainer(tiny_student, tokenizer, tmp_path_factory):
    """A trainer that is only inspected, never run."""
    model = load_model(str(tiny_student))
    apply_dropout(model, 0.1)
    return build_trainer(model, tokenizer, EXAMPLES, tmp_path_factory.mktemp("inspect"), SFTSettings(**FAST))


def prompt_ids(tokenizer, example: dict) -> list[int]:
    return tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True)[
        "input_ids"
    ]


def test_labels_cover_exactly_the_completion_and_its_eos(trainer, tokenizer):
    rows = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer.data_collator(rows)
    for i, example in enumerate(EXAMPLES[:2]):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        length = int(batch["attention_mask"][i].sum())
        start = len(prompt_ids(tokenizer, example))
        assert ids[:start].tolist() == prompt_ids(tokenizer, example)
        assert (labels[:start] == -100).all()  # system tag, user turn and "<|im_start|>assistant\n"
        assert labels[start:length].tolist() == ids[start:length].tolist()
        assert (labels[length:] == -100).all()  # right padding
        trained = tokenizer.decode(labels[start:length])
        assert trained == example["completion"][0]["content"] + "<|im_end|>\n"
        # SmolLM2's pad == eos: the completion's end-of-turn is trained, the padding after it is not
        assert tokenizer.pad_token_id == tokenizer.eos_token_id
        assert tokenizer.eos_token_id in labels[start:length].tolist()
    assert (batch["input_ids"][1][int(batch["attention_mask"][1].sum()) :] == tokenizer.pad_token_id).all()


def test_system_tag_is_rendered_in_the_prompt(trainer, tokenizer):
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert text.startswith(f"<|im_start|>system\n{SEED_TAG}<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?")
    assert "SmolLM" not in text  # the template's default system prompt is replaced by the tag
    assert WEB_TAG in tokenizer.decode(trainer.train_dataset[1]["input_ids"])
    untagged = sft_example("Hi", "Hello")
    assert [m["role"] for m in untagged["prompt"]] == ["user"]


def test_lr_decays_linearly_from_learning_rate_to_final(trainer):
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    lr = [FAST["learning_rate"] * trainer.lr_scheduler.lr_lambdas[0](step) for step in range(11)]
    expected = torch.linspace(FAST["learning_rate"], FAST["final_learning_rate"], 11).tolist()
    assert lr == pytest.approx(expected, rel=1e-6)
    assert trainer.args.weight_decay == 0.1


def test_settings_defaults_and_dropout(trainer):
    settings = SFTSettings()
    assert (settings.learning_rate, settings.final_learning_rate) == (1e-5, 9e-6)
    assert (settings.weight_decay, settings.dropout) == (0.1, 0.1)
    assert SFTSettings(learning_rate=1e-5, final_learning_rate=1e-5).lr_schedule() == {
        "lr_scheduler_type": "constant"
    }
    with pytest.raises(ValueError):
        SFTSettings(final_learning_rate=2e-5)
    attention = trainer.model.model.layers[0].self_attn
    assert attention.attention_dropout == 0.1 and trainer.model.config.attention_dropout == 0.1


def completion_loss(model, tokenizer, examples: list[dict]) -> float:
    """Mean loss on the completion tokens, computed without TRL."""
    losses = []
    for example in examples:
        start = len(prompt_ids(tokenizer, example))
        full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True)
        ids = torch.tensor([full["input_ids"]])
        labels = ids.clone()
        labels[:, :start] = -100
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.first_step, self.steps = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


@pytest.fixture(scope="module")
def trained(tiny_student, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "m0"
    return train_sft(str(tiny_student), EXAMPLES, out, SFTSettings(max_steps=3, save_steps=2, **FAST))


def test_training_lowers_loss_and_saves_a_loadable_model(trained, tiny_student, tokenizer):
    before = AutoModelForCausalLM.from_pretrained(tiny_student).eval()
    after = AutoModelForCausalLM.from_pretrained(trained).eval()
    assert completion_loss(after, tokenizer, EXAMPLES) < completion_loss(before, tokenizer, EXAMPLES)
    assert not torch.equal(before.model.embed_tokens.weight, after.model.embed_tokens.weight)

    assert load_file(trained / "model.safetensors")
    assert after.config.attention_dropout == 0.0  # the base's value, not the training dropout
    assert AutoTokenizer.from_pretrained(trained).chat_template == tokenizer.chat_template
    assert (trained / "generation_config.json").is_file()
    assert not list(trained.glob("checkpoint-*"))  # removed once the final model is saved
    assert not (trained / "README.md").exists()  # the card is the caller's to write

    record = json.loads((trained / COMPLETE_MARKER).read_text())
    assert record["train"]["train_loss"] > 0 and record["settings"]["max_steps"] == 3
    logs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    # the rate each of the 3 updates used: the schedule reaches final_learning_rate after the last one
    lrs = [log["learning_rate"] for log in logs if "learning_rate" in log]
    expected = torch.linspace(FAST["learning_rate"], FAST["final_learning_rate"], 4).tolist()[:3]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_a_finished_folder_is_returned_without_training(trained, tiny_student, monkeypatch):
    stamp = (trained / "model.safetensors").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("a finished run must not load or train anything")

    monkeypatch.setattr(sft, "load_model", fail)
    assert train_sft(str(tiny_student), EXAMPLES, trained, SFTSettings(max_steps=3, **FAST)) == trained
    assert (trained / "model.safetensors").stat().st_mtime_ns == stamp


class SimulatedCrash(Exception):
    pass


class Crash(TrainerCallback):
    """Kill the run right after its first checkpoint is written."""

    def on_save(self, args, state, control, **kwargs):
        raise SimulatedCrash(f"after step {state.global_step}")


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_student, tmp_path):
    out = tmp_path / "myx"
    settings = SFTSettings(max_steps=3, save_steps=1, **FAST)
    with pytest.raises(SimulatedCrash):
        train_sft(str(tiny_student), EXAMPLES, out, settings, callbacks=[Crash()])
    assert (out / "checkpoint-1").is_dir() and not (out / COMPLETE_MARKER).exists()

    counter = CountSteps()
    train_sft(str(tiny_student), EXAMPLES, out, settings, callbacks=[counter])
    assert (counter.first_step, counter.steps) == (1, 2)  # continued from checkpoint-1: steps 2 and 3
    assert json.loads((out / COMPLETE_MARKER).read_text())["resumed_from"].endswith("checkpoint-1")
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs if "loss" in log] == [1, 2, 3]  # none lost, none repeated


def test_lora_is_merged_into_a_plain_model(tiny_student, tmp_path):
    out = train_sft(
        str(tiny_student),
        EXAMPLES,
        tmp_path / "lora",
        SFTSettings(max_steps=1, use_peft=True, lora_r=4, **FAST),
    )
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    before = AutoModelForCausalLM.from_pretrained(tiny_student)
    after = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name in after.state_dict())
    assert not torch.equal(
        before.model.layers[0].mlp.up_proj.weight, after.model.layers[0].mlp.up_proj.weight
    )
