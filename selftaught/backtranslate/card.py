"""Model cards for the models instruction backtranslation trains: M0, Myx, M1, M2."""

from __future__ import annotations

from dataclasses import asdict

from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.training.model_card import CardContent, EvalRow, declared_base_model
from selftaught.training.sft import SFTSettings

HUMPBACK_CITATION = """@misc{li2023selfalignment,
  title         = {Self-Alignment with Instruction Backtranslation},
  author        = {Xian Li and Ping Yu and Chunting Zhou and Timo Schick and Luke Zettlemoyer and
                   Omer Levy and Jason Weston and Mike Lewis},
  year          = {2023},
  eprint        = {2308.06259},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL}
}"""

METHOD = (
    "Instruction backtranslation (Humpback, Li et al. 2023). A seed model M0 and a backward model Myx are "
    "fine-tuned from the base model on a small set of gold (instruction, response) pairs: the first turns "
    "of Open Assistant conversations, best-ranked reply, English. Myx writes an instruction for every "
    "segment of an unlabelled corpus (self-augmentation); the current model rates each (instruction, "
    "segment) pair on a 5-point rubric (self-curation), reading its probabilities of the digits 1-5 at the "
    "score position; the pairs at or above the threshold, tagged 'Answer with knowledge from web search.', "
    "join the seed pairs, tagged 'Answer in the style of an AI Assistant.', to fine-tune the next model "
    "from the base. Each iteration re-curates with the newest model: M0 -> M1 -> M2. Loss on response "
    "tokens only."
)

EVALUATION = (
    "Measured at the end of `selftaught backtranslate run` (details in the run's `evaluation/` folder): "
    "`judge.*`: this model's and the base model's greedy answers to held-out prompts (first turns of seed "
    "trees the seed sample left out, or `--eval_prompts`), both under the seed tag as system prompt, "
    "compared by the base model as judge, in both orders; a prompt is a win when both orders prefer this "
    "model, a tie (half) when they disagree. `answers.*`: mean answer length, so a win by length shows. "
    "`curation.*`: ROC AUC, precision and recall of this model's curation scores on labelled pairs "
    "(held-out seed pairs against the same instructions with another pair's answer, or "
    "`--eval_curation_data`)."
)

ROLES = {
    "M0": "the seed model: the base fine-tuned on the seed pairs; it curates iteration 1",
    "Myx": "the backward model: the base fine-tuned to write the instruction for a given response",
}


def role(name: str, iteration: int) -> str:
    if name in ROLES:
        return ROLES[name]
    return f"the base fine-tuned on the seed pairs plus the augmented pairs M{iteration - 1} selected"


def backtranslation_card(
    config: BacktranslateConfig,
    settings: SFTSettings,
    name: str,
    iteration: int,
    sizes: dict,
    summary: dict,
    results: list[EvalRow] | None = None,
) -> CardContent:
    histograms = {
        stage: line["score_histogram"]
        for stage, line in summary.items()
        if stage.startswith("select_") and "score_histogram" in line
    }
    funnel = {
        stage: {"rows in": line["rows_in"], "rows out": line["rows_out"]} for stage, line in summary.items()
    }
    extra = {}
    if histograms:
        rows = "\n".join(
            f"| {stage.removeprefix('select_')} | " + " | ".join(str(h[d]) for d in "12345") + " |"
            for stage, h in histograms.items()
        )
        extra["Curation scores"] = "| iteration | 1 | 2 | 3 | 4 | 5 |\n|---|---|---|---|---|---|\n" + rows
    if results:
        extra["How it was evaluated"] = EVALUATION
    return CardContent(
        model_name=f"{config.run_dir.rstrip('/').split('/')[-1]}-{name}",
        base_model=declared_base_model(config.base_model),
        summary=f"{name}, {role(name, iteration)}. Trained with selftaught's `selftaught backtranslate` "
        f"(stage {'train' if iteration else 'train-seed / train-backward'}, iteration {iteration}).",
        method=METHOD,
        citations=[HUMPBACK_CITATION],
        hyperparameters=asdict(settings)
        | {
            "seed_size": config.seed_size,
            "temperature (augment)": config.temperature,
            "top_p (augment)": config.top_p,
            "curation_mode": config.curation_mode,
            "select_by": config.select_by,
            "min_score": config.min_score,
        },
        data=sizes | {"stages": funnel},
        results=results or [],
        tags=["selftaught", "humpback", "instruction-backtranslation"],
        extra_sections=extra,
    )
