"""The model card of a distilled student: what it is, how it was made, and how it scores."""

from __future__ import annotations

from pathlib import Path

from selftaught.data.shards import read_manifest
from selftaught.distill.config import SELF_TEACHER, DistillConfig
from selftaught.distill.results import DistillResults
from selftaught.models.naming import model_label
from selftaught.training.model_card import CardContent, EvalRow, comparison_table, declared_base_model

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

OPSD_CITATION = """@misc{zhao2026opsd,
  title         = {Self-Distilled Reasoner: On-Policy Self-Distillation for Large Language Models},
  author        = {Zhao and others},
  year          = {2026},
  eprint        = {2601.18734},
  archivePrefix = {arXiv}
}"""

SELF_METHOD = (
    " Here the teacher is the student itself: a frozen copy of its starting weights, whose prompt also "
    "holds privileged context the student never sees (`teacher_context`, added to the user turn after the "
    "problem), and which scores the student's own tokens under that longer prompt: on-policy "
    "self-distillation (OPSD, Zhao et al. 2026)."
)

KNOBS = (
    "lmbda",
    "beta",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seq_kd",
    "teacher_context",
    "engine",
    "max_staleness",
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


def eval_rows(results: DistillResults, dataset: str) -> list[EvalRow]:
    rows = []
    for key, metrics in results.evaluated().items():
        for metric, value in metrics.items():
            if metric != "tokens":
                rows.append(EvalRow("held-out distillation", dataset, metric, ROW_LABELS[key], float(value)))
    return rows


def data_name(data: str) -> str:
    """How the card names the data: the shipped set by its place in the package, a local file or folder by
    its name, a Hub dataset by its id; never a path of this machine."""
    package = Path(__file__).resolve().parent.parent
    path = Path(data).expanduser().resolve()
    if path.is_relative_to(package):
        return f"selftaught/{path.relative_to(package).as_posix()}"
    return path.name if Path(data).expanduser().exists() else data


def teacher_label(config: DistillConfig) -> str:
    if config.teacher == SELF_TEACHER:
        return "self (a frozen copy of the student's starting weights)"
    if config.teacher_cache:
        params = read_manifest(Path(config.teacher_cache))["params"]
        return (
            f"{params['teacher']['name']}, read from a cache of its top-{params['top_k']} log-probabilities "
            "per token (`selftaught distill cache-teacher`)"
        )
    if config.teacher_url:  # never the URL: it names a machine of the user's
        named = model_label(config.teacher) if config.teacher else "a model"
        return f"{named} served over HTTP (its top-{config.teacher_top_k_used} log-probabilities per token)"
    return model_label(config.teacher)


def hyperparameters(config: DistillConfig) -> dict[str, object]:
    """The knobs that shaped the run: num_train_epochs only when max_steps did not override it, the LoRA
    knobs only when LoRA was trained, warmup in steps when it is a count of steps."""
    knobs = {k: getattr(config, k) for k in KNOBS} | {"teacher_dtype": config.teacher_dtype_used}
    if config.max_steps > 0:
        del knobs["num_train_epochs"]
    if not config.teacher_context:
        del knobs["teacher_context"]
    if not config.use_peft:
        knobs = {k: v for k, v in knobs.items() if not k.startswith("lora_")}
    if config.teacher_url:
        knobs["teacher_top_k"] = config.teacher_top_k_used
    if config.teacher_url or config.teacher_cache:
        del knobs["teacher_dtype"]  # the server's own, or the cache's
    if config.loss != "jsd":
        knobs |= {"loss": config.loss, "kl_estimator": config.kl_estimator_used}
    if float(config.warmup_steps).is_integer():
        # transformers types it float (below 1, a ratio of the steps): `--warmup_steps 1` is 1 step, not 1.0.
        knobs["warmup_steps"] = int(config.warmup_steps)
    return knobs | {"student": model_label(config.student), "teacher": teacher_label(config)}


def trained_on(prompts: tuple[int, int], data: str) -> str:
    trained, available = prompts
    if trained < available:
        return f"on {trained} of the {available} training prompts of `{data}`"
    return f"on the {available} training prompts of `{data}`"


def distillation_card(
    config: DistillConfig, results: DistillResults, prompts: tuple[int, int], n_eval: int
) -> CardContent:
    """`prompts`: (distinct training prompts the steps reached, training prompts available)."""
    student_name = Path(config.student).name
    elsewhere = "cached-teacher" if config.teacher_cache else "served-teacher"  # named by no model
    data = data_name(config.data)
    self_taught = config.teacher == SELF_TEACHER
    how = "Self-distilled on-policy with privileged context" if self_taught else "Distilled on-policy"
    warning = results.warning
    cross = results.cross_tokenizer
    return CardContent(
        model_name=f"{student_name}-opsd"
        if self_taught
        else f"{student_name}-gkd-{Path(config.teacher or elsewhere).name}",
        base_model=model_label(declared_base_model(config.student)),  # a Hub id, else a name, never a path
        summary=(
            (f"**{warning}**\n\n" if warning else "")
            # the labels hold commas of their own ("X, dequantised from ..."): one line each, not one sentence
            + f"{how} with `selftaught distill`, {trained_on(prompts, data)}.\n\n"
            f"- Student (the starting weights): {model_label(config.student)}\n"
            f"- Teacher: {teacher_label(config)}\n\n" + student_origin(config.student)
        ),
        method=METHOD + (SELF_METHOD if self_taught else "") + (CROSS_METHOD if cross else ""),
        citations=[GKD_CITATION] + ([OPSD_CITATION] if self_taught else []),
        hyperparameters=hyperparameters(config),
        data={
            "source": data,
            "split": config.data_split,
            "training prompts available": prompts[1],
            "training prompts reached by the optimizer steps": prompts[0],
            "held-out prompts": n_eval,
            "held-out split": config.eval_split or "held-out rows",
        },
        results=eval_rows(results, data),
        tags=["selftaught", "distillation", "gkd", "on-policy-distillation"]
        + (["self-distillation", "opsd"] if self_taught else []),
        datasets=[config.data] if not Path(config.data).expanduser().exists() else [],
        extra_sections=({"Warning": warning} if warning else {})
        | ({"Closeness is not task skill here": note} if (note := results.task_note()) else {})
        | ({"Teacher with another tokenizer": alignment_section(cross)} if cross else {})
        | ({"Closer to the teacher?": closer} if (closer := closeness(results)) else {}),
    )


CLOSENESS_NOTE = (
    "The student after training minus before, per token on the teacher's greedy answers to the held-out "
    "prompts: lower is closer for forward_kl, reverse_kl, jsd and nll (the student's negative log-likelihood "
    "of those answers); higher for top1_agreement. A `_sparse` divergence is measured on a served or cached "
    "teacher's top-K log-probabilities plus a tail bin: a lower bound of the full-vocabulary one. "
    "degenerate_share is the share of the student's own answers that loop or are empty: lower is better; "
    "math_accuracy (prompts with a verifiable gold answer) the share answered right: the task itself."
)


CROSS_CLOSENESS_NOTE = (
    "The student after training minus before, on the teacher's greedy answers to the held-out prompts: "
    "nll_per_byte is the student's negative log-likelihood of those answers per UTF-8 byte (lower is closer; "
    "per byte, not per token, because the two tokenizers cut text differently). degenerate_share is the "
    "share of the student's own answers that loop or are empty: lower is better; math_accuracy (prompts "
    "with a verifiable gold answer) the share answered right: the task itself."
)


def closeness(results: DistillResults) -> str:
    """The trained student against its start on every distance to the teacher, with 95% intervals."""
    note = CROSS_CLOSENESS_NOTE if results.cross_tokenizer else CLOSENESS_NOTE
    return comparison_table(results.comparisons or [], "student_after", note)


CROSS_METHOD = (
    " The teacher's tokenizer differs from the student's: each completion is turned into text, "
    "re-tokenised by the teacher after its own chat template, and the teacher's log-probabilities are "
    "mapped back onto the student's tokens by byte spans (a teacher token that straddles two student tokens "
    "is shared by bytes). Where a student token starts on a teacher token boundary, the loss is the "
    "generalized JSD over the token strings both vocabularies hold plus one tail bin for the rest; "
    "elsewhere it is `cross_tokenizer_fallback`."
)


def alignment_section(cross: dict) -> str:
    """The alignment the run used and why, and the share of the trained completion tokens on each path."""
    shares = ", ".join(
        f"{name.removesuffix('_share').replace('_', ' ')} {value:.1%}"
        for name, value in cross.items()
        if name.endswith("_share")
    )
    return (
        f"Alignment: {cross['alignment']}.\n\nFallback loss: `{cross['fallback']}`. Of the "
        f"{cross['completion_tokens']} completion tokens trained on: {shares} (shared support: the "
        "generalized JSD over the shared strings; fallback; unaligned: past the last whole UTF-8 character, "
        "no loss)."
        + (
            f" {cross['non_canonical_completions']} of the {cross['completions']} completions were not the "
            "student tokenizer's own tokenisation of their text; the teacher scored the text as its "
            "tokenizer cuts it."
            if "completions" in cross  # results written before the count have none
            else ""
        )
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
