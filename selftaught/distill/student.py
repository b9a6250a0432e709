"""The embedded default student: a layer cut of SmolLM2-135M-Instruct, healed once by supervised KD.

A cut of the teacher's decoder layers (`models.embedded.embedded_student`) shares its tokenizer but is not
a language model: its greedy answers are word salad. On-policy distillation from such a student
collapses (reverse-KL-leaning objectives find text the teacher predicts easily, such as whitespace after
whitespace), and the GKD paper's students start from a checkpoint fine-tuned on the task. So the cut is
healed once, by selftaught's own `GKDistillTrainer` with lmbda 0 and beta 0: the forward KL from the
teacher's next-token distributions on the teacher's own greedy answers (`TEACHER_ANSWERS`, shipped) to
the shipped chat prompts (the first turns of the oasst1-format seed set and the math training prompts;
never the held-out test split). Healing on the teacher's text rather than on human text is what makes
the student write like the teacher, stopping where it stops: healed on the human answers instead, the
24-layer cut looped on more held-out prompts than before healing (degenerate share 0.38 -> 0.50).
The healed student is cached beside the dequantised teacher, written atomically, with a card saying how
it was cut and healed, on what, for how many tokens, and how close it came to the teacher on the
held-out math prompts.

The build runs in a child process (`python -m selftaught.distill.student`), under a file lock: the
calling run's accelerate state (mixed precision, a distributed launch) stays its own, and of several
processes started at once (`accelerate launch`), one builds while the others wait for it, told which
process they wait for. The child holds the lock with its parent (it inherits the locked file) and ends
with it (`end_with_parent`): a killed run leaves no build running on alone, and a rerun never takes the
scratch folder of a live build for a dead one's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from selftaught.data.folder_lock import holding
from selftaught.data.formats import Example, to_examples, tokenize_examples, tokenize_prompt
from selftaught.data.loading import load_rows
from selftaught.data.seed_pairs import BUILTIN_OASST_SEED, load_seed_pairs
from selftaught.distill.config import DistillConfig
from selftaught.distill.trainer import GKDistillTrainer
from selftaught.evaluate.distance import HeldOutEvaluation, HeldOutSettings
from selftaught.generation.base import EngineSettings, SamplingParams
from selftaught.generation.engines import make_engine
from selftaught.models import (
    load_for_inference,
    load_model,
    load_tokenizer,
    restore_weights_mode,
    shared_vocab_size,
)
from selftaught.models.embedded import (
    TEACHER_HUB_ID,
    TEACHER_NAME,
    cache_dir,
    embedded_student,
    embedded_teacher,
    is_complete,
    publish,
)
from selftaught.scoring.degeneration import ended_with_eos, is_degenerate
from selftaught.training.callbacks import replace_progress_bar

BUILTIN = Path(__file__).resolve().parent.parent / "data" / "builtin"
MATH_PROMPTS = BUILTIN / "math_prompts"
# Longer than any `Healing.max_completion_tokens`: an answer cut at this cap is cut again when tokenised
# for healing, so the student never learns a made-up EOS in mid-sentence.
TEACHER_ANSWER_TOKENS = 160
# Distributed-launch variables the child must not inherit: it trains alone, as one process.
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Healing:
    """How the embedded student is cut and healed; its values name the cached folder's card."""

    # Decoder layers of the 30-layer teacher the student keeps (its embeddings and final norm too): all but
    # the six middle layers 13-18. Measured on shipped text (48 tokens of 12 answers), cutting there costs
    # least (forward KL 1.1 nats/token to the teacher, top-1 agreement 0.48); a 15-layer cut starts at 9.2
    # and 0.03 and was still repeating itself after 60 healing steps; 20 layers (drop 10-19) start at 4.3.
    layers: tuple[int, ...] = tuple(i for i in range(30) if not 13 <= i <= 18)
    # Optimizer steps of forward-KL training, and the prompts per step.
    steps: int = 30
    batch_size: int = 8
    # Peak learning rate (AdamW, cosine decay after a short warmup): low, as the cut is already close.
    learning_rate: float = 1e-4
    # The healing text (file name under selftaught/data/builtin/); its answers are cut to this many tokens.
    data: str = "teacher_answers.jsonl"
    max_completion_tokens: int = 128
    # The held-out numbers on the card: the first this many math test prompts, greedy, this long.
    eval_prompts: int = 16
    eval_max_new_tokens: int = 96
    seed: int = 0


HEALING = Healing()
# The teacher's greedy answers to the healing prompts, written by `python -m selftaught.distill.student
# --write-teacher-answers`. Shipped, as generating them took 6.5 minutes here (vLLM on 2 CPU cores).
TEACHER_ANSWERS = BUILTIN / HEALING.data


def healed_folder(healing: Healing = HEALING) -> Path:
    return cache_dir() / f"{TEACHER_NAME}-{len(healing.layers)}L-healed"


def healing_prompts() -> list[tuple[str, list[dict[str, str]]]]:
    """(source, chat prompt) of each healing prompt: the seed set's first turns, the math training prompts."""
    pairs, _ = load_seed_pairs(str(BUILTIN_OASST_SEED), size=None)
    chat = [("oasst_seed", [{"role": "user", "content": p["instruction"]}]) for p in pairs]
    math = to_examples(load_rows(str(MATH_PROMPTS), "train"), str(MATH_PROMPTS))
    return chat + [("math_train", e.prompt) for e in math]


def write_teacher_answers(engine: str = "hf", path: Path = TEACHER_ANSWERS) -> None:
    """Regenerate `TEACHER_ANSWERS`: the teacher's greedy answer to every healing prompt, as chat rows."""
    # float32 on any device: the shipped file is rewritten byte for byte
    generator = make_engine(
        EngineSettings(engine=engine), str(embedded_teacher()), 16, dtype="float32", name=TEACHER_NAME
    )
    tokenizer, prompts = generator.tokenizer, healing_prompts()
    params = SamplingParams(max_new_tokens=TEACHER_ANSWER_TOKENS, temperature=0.0)
    answers = generator.generate([tokenize_prompt(tokenizer, p) for _, p in prompts], params, "teacher")
    rows = [
        {
            "source": source,
            "messages": prompt
            + [{"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}],
            "tokens": len(ids),
            "ended_with_eos": ended_with_eos(ids, [tokenizer.eos_token_id]),
        }
        for (source, prompt), ids in zip(prompts, answers, strict=True)
    ]
    scratch = path.with_name(f".{path.name}.partial")
    scratch.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    scratch.replace(path)


def healing_examples(path: Path = TEACHER_ANSWERS) -> list[Example]:
    """The teacher's shipped answers to the healing prompts, less the few that loop (`is_degenerate`)."""
    examples = to_examples(load_rows(str(path)), str(path))
    return [e for e in examples if not is_degenerate(e.completion or "")]


def heal(student_dir: Path, teacher_dir: Path, examples: list[Example], out: Path, healing: Healing) -> dict:
    """Train the student by forward KL to the teacher on `examples` and save it (with its tokenizer) to
    `out`; returns what the card reports: steps, completion tokens trained on, seconds, final loss."""
    tokenizer = load_tokenizer(str(student_dir))
    student, teacher = load_model(str(student_dir)), load_model(str(teacher_dir))
    with tempfile.TemporaryDirectory() as scratch:
        config = DistillConfig(
            output_dir=scratch,
            lmbda=0.0,
            beta=0.0,
            max_steps=healing.steps,
            per_device_train_batch_size=healing.batch_size,
            learning_rate=healing.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, healing.steps // 20),
            max_new_tokens=healing.max_completion_tokens,
            logging_steps=1,  # each log line counts its step's completion tokens
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            seed=healing.seed,
        )
        trainer = GKDistillTrainer(
            model=student,
            teacher=teacher,
            args=config,
            processing_class=tokenizer,
            train_dataset=tokenize_examples(tokenizer, examples, 512, healing.max_completion_tokens),
        )
        replace_progress_bar(trainer)
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
    tokens = sum(int(log.get("completion_tokens", 0)) for log in trainer.state.log_history)
    trainer.model.save_pretrained(out)
    restore_weights_mode(out)
    tokenizer.save_pretrained(out)
    return {
        "steps": output.global_step,
        "completion_tokens": tokens,
        "seconds": round(seconds, 1),
        "final_loss": output.metrics.get("train_loss"),
    }


def held_out_numbers(
    models: dict[str, Path], teacher_dir: Path, healing: Healing, answers: Path
) -> dict[str, dict]:
    """Each model's held-out metrics against the teacher on the first math test prompts (never trained on);
    every answer is saved in `answers` (`<model>.parquet`) for a person to read."""
    tokenizer = load_tokenizer(str(teacher_dir))
    teacher = load_for_inference(str(teacher_dir), "float32")  # the card's numbers: float32 everywhere
    examples = to_examples(load_rows(str(MATH_PROMPTS), "test"), str(MATH_PROMPTS))[: healing.eval_prompts]
    numbers = {}
    for name, folder in models.items():
        model = load_for_inference(str(folder), "float32")
        settings = HeldOutSettings(
            healing.eval_max_new_tokens, 16, shared_vocab_size(tokenizer, model, teacher), 512
        )
        evaluation = HeldOutEvaluation(teacher, tokenizer, examples, answers, settings)
        numbers[name] = evaluation.metrics(model, name)
    numbers["teacher"] = evaluation.teacher_metrics()
    return numbers


def healed_card(healing: Healing, record: dict, numbers: dict[str, dict]) -> str:
    """The healed student's README.md: YAML front matter (base model, how it was made) and its story."""
    kept = list(healing.layers)
    front = {
        "base_model": TEACHER_HUB_ID,
        "library_name": "transformers",
        "tags": ["selftaught", "distillation", "layer-pruning"],
        "selftaught": {
            "cut": {"teacher_layers": 30, "kept_layers": kept},
            "healing": {
                "method": "supervised KD: forward KL(teacher || student), GKDistillTrainer, lmbda 0, beta 0",
                "data": (
                    f"selftaught/data/builtin/{healing.data}: the teacher's greedy answers to the "
                    "first turns of oasst_seed.jsonl and to math_prompts/train.jsonl, less those that loop"
                ),
                **asdict(healing) | {"layers": kept},
                **record,
            },
            "held_out": {
                "data": "selftaught/data/builtin/math_prompts/test.jsonl",
                "prompts": healing.eval_prompts,
                "max_new_tokens": healing.eval_max_new_tokens,
                **{name: {k: round(float(v), 4) for k, v in m.items()} for name, m in numbers.items()},
            },
        },
    }
    rows = ["| metric | " + " | ".join(numbers) + " |", "|---" * (len(numbers) + 1) + "|"]
    metrics = dict.fromkeys(m for values in numbers.values() for m in values if m != "tokens")
    for metric in metrics:
        cells = [f"{numbers[n][metric]:.4g}" if metric in numbers[n] else "-" for n in numbers]
        rows.append(f"| {metric} | " + " | ".join(cells) + " |")
    name = healed_folder(healing).name
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {name}\n\n"
        f"A student derived from {TEACHER_NAME}: its embeddings, final norm and decoder layers {kept} (of "
        f"30), then healed by supervised knowledge distillation from {TEACHER_NAME}: the forward KL from the "
        f"teacher's next-token distributions, over {record['completion_tokens']} completion tokens in "
        f"{record['steps']} optimizer steps of {healing.batch_size} prompts (learning rate "
        f"{healing.learning_rate:g}, cosine), on the teacher's own greedy answers (shipped) to the first "
        "turns of the oasst1-format seed set and to the math training prompts, less those that loop. It "
        "shares the teacher's tokenizer exactly.\n\n"
        f"## Held-out numbers\n\nGreedy answers to the first {healing.eval_prompts} math test prompts (never "
        f"trained on), at most {healing.eval_max_new_tokens} tokens; distances per token on the teacher's "
        "greedy answers; `cut` is the student before healing. Every answer is in `evaluation/*.parquet`."
        "\n\n" + "\n".join(rows) + "\n"
    )


def settings_of(healing: Healing) -> dict:
    return json.loads(json.dumps(asdict(healing)))  # tuples as lists, as healing.json holds them


def is_current(folder: Path, healing: Healing) -> bool:
    """A complete healed student, built with these very settings (a changed recipe is rebuilt)."""
    record = folder / "healing.json"
    return (
        is_complete(folder)
        and record.is_file()
        and json.loads(record.read_text()).get("settings") == settings_of(healing)
    )


def build_healed_student(healing: Healing = HEALING) -> Path:
    """Cut, heal, evaluate and save the embedded student (in this process); returns its folder."""
    folder = healed_folder(healing)
    if is_current(folder, healing):
        return folder
    teacher_dir = embedded_teacher()
    cut = embedded_student(list(healing.layers))
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{folder.name}.") as scratch:
        healed = Path(scratch) / "model"
        record = heal(cut, teacher_dir, healing_examples(BUILTIN / healing.data), healed, healing)
        numbers = held_out_numbers(
            {"cut": cut, "healed": healed}, teacher_dir, healing, healed / "evaluation"
        )
        (healed / "README.md").write_text(healed_card(healing, record, numbers))
        summary = {"settings": settings_of(healing)} | record | {"held_out": numbers}
        (healed / "healing.json").write_text(json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)  # one built by another recipe
        publish(healed, folder)
    return folder


def healed_student(healing: Healing = HEALING) -> Path:
    """Folder of the default student, built on first use in a child process (see the module docstring)."""
    folder = healed_folder(healing)
    if is_current(folder, healing):
        return folder
    cache_dir().mkdir(parents=True, exist_ok=True)

    def wait(who: str) -> None:  # another process is building it: wait for it
        print(f"Waiting for {who}: it is building the embedded student {folder.name}", flush=True)

    with holding(cache_dir() / f".{folder.name}.lock", f"building {folder.name}", wait) as lock:
        if not is_current(folder, healing):
            for stale in cache_dir().glob(f".{folder.name}.*"):  # a dead build's: a live one holds the lock
                if stale.is_dir():
                    shutil.rmtree(stale)
            print(f"Building the embedded student once: {folder.name} (cut, then healed; a few minutes)")
            env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
            child = [sys.executable, "-m", "selftaught.distill.student", "--parent", str(os.getpid())]
            child += ["--healing", json.dumps(settings_of(healing))]
            subprocess.run(child, env=env, check=True, pass_fds=() if lock is None else (lock,))
    return folder


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_parent(parent: int) -> None:
    """End this build when `parent`, the run that started it, ends, however it ends (kill -9 too).

    On Linux the kernel sends SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG, called through ctypes:
    Python has no binding), and SIGTERM ends the build as Ctrl-C does, removing its scratch folder. Where
    there is no such call, an orphaned build runs on to its end, holding the lock it inherited, so that a
    rerun waits for it rather than starting a second one.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it ended before the kernel was told
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build the embedded default student (see the docstring).")
    parser.add_argument(
        "--write-teacher-answers",
        action="store_true",
        help=f"instead, regenerate the shipped healing data ({TEACHER_ANSWERS.name}) with the teacher",
    )
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="for --write-teacher-answers")
    parser.add_argument(
        "--healing", type=json.loads, help="Healing's fields as JSON (default: HEALING); for a smaller build"
    )
    parser.add_argument("--parent", type=int, help="pid of the run that waits for this build: end with it")
    args = parser.parse_args()
    if args.parent is not None:
        end_with_parent(args.parent)
    if args.write_teacher_answers:
        write_teacher_answers(args.engine)
    else:
        fields = asdict(HEALING) | (args.healing or {})
        build_healed_student(Healing(**fields | {"layers": tuple(fields["layers"])}))
