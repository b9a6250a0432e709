"""The model card of a distilled student: what it is, how it was made, and how it scores."""

from __future__ import annotations

from pathlib import Path

from selftaught.distill.config import DistillConfig
from selftaught.training.model_card import CardContent, EvalRow, declared_base_model

GKD_CITATION = """@inproceedings{agarwal2024onpolicy,
  title     = {On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes},
  author    = {Rishabh Agarwal and Nino Vieillard and Yongchao Zhou and Piotr Stanczyk and Sabela Ramos and
               Matthieu Geist and Olivier Bachem},
  booktitle = {The Twelfth International Conference on Learning Representations},
  year      = {2024},
  eprint    = {2306.13649},
  archivePrefix = {arXiv}
}"""

METHOD = (
    "Generalized knowledge distillation (GKD, Agarwal et al., ICLR 2024). On each optimizer step, with "
    "probability `lmbda`, the student samples its own completions to the training prompts (on-policy, at "
    "`temperature`); otherwise it trains on the dataset's completions (or, with `seq_kd`, the teacher's). "
    "The frozen teacher scores the same tokens, and the student minimises the generalized Jensen-Shannon "
    "divergence JSD_beta = beta KL(P_T || M) + (1 - beta) KL(P_S || M), M = beta P_T + (1 - beta) P_S, "
    "between the teacher's and its own next-token distributions over the shared vocabulary, summed over "
    "completion tokens (EOS included) and divided by the number of completion tokens in the optimizer "
    "step. beta = 0 is the forward KL, beta = 1 the reverse KL. Trained with selftaught on transformers' "
    "Trainer."
)

KNOBS = (
    "lmbda",
    "beta",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seq_kd",
    "engine",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "bf16",
    "student_dtype",
    "teacher_dtype",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "max_prompt_length",
    "seed",
)

ROW_LABELS = {"teacher": "teacher", "student_before": "student (before)", "student_after": "student (after)"}


def eval_rows(results: dict, dataset: str) -> list[EvalRow]:
    rows = []
    for key, label in ROW_LABELS.items():
        for metric, value in results.get(key, {}).items():
            if metric != "tokens":
                rows.append(EvalRow("held-out distillation", dataset, metric, label, float(value)))
    return rows


def data_name(data: str) -> str:
    """How the card names the data: the shipped set by its name, not by this machine's path."""
    package = Path(__file__).resolve().parent.parent
    path = Path(data).resolve()
    return f"selftaught/{path.relative_to(package)}" if path.is_relative_to(package) else data


def distillation_card(config: DistillConfig, results: dict, n_train: int, n_eval: int) -> CardContent:
    student_name = Path(config.student).name
    data = data_name(config.data)
    teacher_name = Path(config.teacher).name
    return CardContent(
        model_name=f"{student_name}-gkd-{teacher_name}",
        base_model=declared_base_model(config.student),
        summary=(
            f"{student_name} distilled on-policy from the teacher {teacher_name} with selftaught's "
            f"`selftaught distill`, on {n_train} prompts from `{data}`. " + student_origin(config.student)
        ),
        method=METHOD,
        citations=[GKD_CITATION],
        hyperparameters={k: getattr(config, k) for k in KNOBS}
        | {"student": config.student, "teacher": config.teacher},
        data={
            "source": data,
            "split": config.data_split,
            "training prompts": n_train,
            "held-out prompts": n_eval,
            "held-out split": config.eval_split or "held-out rows",
        },
        results=eval_rows(results, data),
        tags=["selftaught", "distillation", "gkd", "on-policy-distillation"],
        datasets=[config.data] if not Path(config.data).exists() else [],
    )


def student_origin(student: str) -> str:
    """The first paragraph of the student's own card, if any (the embedded student says how it was cut)."""
    card = Path(student) / "README.md"
    if not card.is_file():
        return ""
    paragraphs = [
        p.strip() for p in card.read_text().split("\n\n") if p.strip() and not p.startswith(("#", "---"))
    ]
    return f"About the starting student: {paragraphs[0]}" if paragraphs else ""
