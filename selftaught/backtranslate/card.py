"""Model cards for the models instruction backtranslation trains: M0, Myx, M1, M2.

Each card describes the data up to its own stage only (M1's card knows nothing of curate_2), says how
its training pairs were curated and selected and why, and, once the run is evaluated, compares the
model with the one before it and with the base, with 95% bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import asdict

from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.runfolder import upstream
from selftaught.backtranslate.stages import (
    CURATE,
    SELECT,
    TRAIN,
    TRAIN_BACKWARD,
    TRAIN_SEED,
    iterations,
    trainer,
)
from selftaught.models.naming import model_label
from selftaught.training.model_card import CardContent, EvalRow, comparison_table, declared_base_model
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
    "segment of an unlabelled corpus (self-augmentation); the current model scores each (instruction, "
    "segment) pair (self-curation: the paper's 5-point rubric, or a likelihood score such as the PMI of the "
    "segment given the instruction, see Curation below); the pairs the selection rule keeps, tagged "
    "'Answer with knowledge from web search.', join the seed pairs, tagged 'Answer in the style of an AI "
    "Assistant.', to fine-tune the next model from the base. Each iteration re-curates with the newest "
    "model: M0 -> M1 -> M2. Loss on response tokens only."
)

# Why a curation mode was chosen, as the card says it (the measurements are in BENCHMARKS.md).
WHY = {
    "rubric": "the paper's rubric, read as P('1'..'5') in one forward pass; it needs a capable rater (a "
    "135M rater scores at chance, ROC AUC about 0.5 on the project's labelled dev set)",
    "generate": "the paper's own way: the rater reasons briefly, then the digit is read; it needs a capable "
    "rater",
    "pmi": "instruction-conditioned pointwise mutual information: how much the instruction makes the segment "
    "likelier; it needs only next-token predictions, which small models make well (with the 135M base model "
    "on the project's labelled dev set over 32 tokens, ROC AUC 0.998 against mismatched and 0.935 against "
    "promotional answers, where its rubric scores are at chance; selected by pmi_guarded, a segment that "
    "mostly echoes its instruction or speaks to its rater about its rating ranks last, and the AUC over "
    "every negative, adversarial ones included, is 0.931; a paraphrase of the instruction still games it, "
    "see BENCHMARKS.md)",
    "ifd": "Superfiltering's instruction-following difficulty, ranked as Superfiltering ranks it",
    "backward": "how well the segment predicts its instruction under the backward model Myx",
}

EVALUATION = (
    "Measured at the end of `selftaught backtranslate run` (details in the run's `evaluation/` folder), "
    "on data no model of the run was trained on (seed pairs the seed sample left out, or `--eval_prompts`"
    " / `--eval_curation_data`). `heldout_nll.per_token`: negative log-likelihood per token of the gold "
    "answers (lower is better). `new_domain_nll.per_token`: the same on corpus documents held out of "
    "augmentation (`--eval_new_domain_documents`, chosen by the seed), each paired with a user's question"
    " about it from a fixed template (for a package description: 'What is the Python package <name> for?'"
    " and the like), the gold answer being the document's own text: lower means the model learned the "
    "corpus's domain, which backtranslation should teach. `relevance.pmi`: the PMI of the model's greedy "
    "answer given its prompt, scored by the base model (higher: the answer responds to its prompt). "
    "`answers.*`: the greedy answers' degenerate share (empty or looping), distinct bigrams, length and "
    "EOS share. `judge.*`: the base model compares this model's and its own greedy answers in both "
    "orders; a win when both orders prefer this model, a tie (half) when they disagree; its tie rate is "
    "beside its win rate. `curation.*`: ROC AUC of this model's curation score on labelled pairs. Every "
    "interval is a 95% percentile bootstrap over the evaluated items (prompts or pairs), paired when two "
    "models are compared."
)

ROLES = {
    "M0": "the seed model: the base fine-tuned on the seed pairs; it curates iteration 1",
    "Myx": "the backward model: the base fine-tuned to write the instruction for a given response",
}


def role(name: str, iteration: int) -> str:
    if name in ROLES:
        return ROLES[name]
    return f"the base fine-tuned on the seed pairs plus the augmented pairs M{iteration - 1} selected"


def train_sizes(seed: int, selected: int | None = None) -> dict:
    """The data sizes a model card lists for M0 (seed only) and M(k) (seed + selected)."""
    sizes = {"seed pairs": seed}
    return sizes if selected is None else sizes | {"selected augmented pairs": selected}


def stages_up_to(summary: dict, name: str, iteration: int) -> dict:
    """The summary lines of the stages that made `name`'s training data (and its own training)."""
    trained_by = TRAIN_BACKWARD.name() if name == "Myx" else trainer(iteration)
    wanted = {trained_by, *upstream(trained_by, list(summary))}
    return {stage: line for stage, line in summary.items() if stage in wanted}


def curation_section(config: BacktranslateConfig, summary: dict) -> str:
    """Per iteration: what scored the pairs, by which rule they were kept, and why that mode."""
    lines = []
    for k in iterations(summary):
        if (line := summary.get(SELECT.name(k))) is None:
            continue
        curated = summary.get(CURATE.name(k), {})
        modes = curated.get("settings", {}).get("curation_mode", config.curation_mode)
        lines.append(
            f"- Iteration {k}: M{k - 1} scored {curated.get('rows_out', '?')} pairs "
            f"with `{modes}`; the rule `{line.get('rule', '?')}` kept {line['rows_out']}."
        )
        if isinstance(line.get("score_histogram"), dict):
            every, kept = line["score_histogram"], line.get("kept_histogram", {})
            lines.append(f"\n  | {line.get('score', 'score')} from | " + " | ".join(every) + " |")
            lines.append("  |---|" + "---|" * len(every))
            lines.append("  | pairs | " + " | ".join(str(n) for n in every.values()) + " |")
            lines.append("  | kept | " + " | ".join(str(kept.get(b, 0)) for b in every) + " |\n")
    why = [f"- `{m}`: {WHY[m]}." for m in config.curation_modes]
    return "\n".join(lines + ["", "Why this mode:", *why])


def stage_commands(iteration: int) -> str:
    """The stages that train a model of `iteration`, as the card names them."""
    return TRAIN.command if iteration else f"{TRAIN_SEED.command} / {TRAIN_BACKWARD.command}"


COMPARISON_NOTE = (
    "Lower is better for heldout_nll, new_domain_nll and degenerate_share; higher for relevance.pmi and "
    "judge.win_rate."
)


def backtranslation_card(
    config: BacktranslateConfig,
    settings: SFTSettings,
    name: str,
    iteration: int,
    sizes: dict,
    summary: dict,
    results: list[EvalRow] | None = None,
    comparisons: list[dict] | None = None,
) -> CardContent:
    own = stages_up_to(summary, name, iteration)
    funnel = {
        stage: {"rows in": line["rows_in"], "rows out": line["rows_out"]} for stage, line in own.items()
    }
    extra = {}
    if iteration:
        extra["Curation"] = curation_section(config, own)
    if results:
        extra["How it was evaluated"] = EVALUATION
    if comparisons and (text := comparison_table(comparisons, name, COMPARISON_NOTE)):
        extra["Compared with the model before it and the base"] = text
    return CardContent(
        model_name=f"{config.run_dir.rstrip('/').split('/')[-1]}-{name}",
        base_model=model_label(declared_base_model(config.base_model)),  # a Hub id, else a name, never a path
        summary=f"{name}, {role(name, iteration)}. Trained with selftaught's `selftaught backtranslate` "
        f"(stage {stage_commands(iteration)}, iteration {iteration}).",
        method=METHOD,
        citations=[HUMPBACK_CITATION],
        hyperparameters=asdict(settings)
        | {"base_model": model_label(config.base_model), "seed_size": config.seed_size}
        | (
            {
                "temperature (augment)": config.temperature,
                "top_p (augment)": config.top_p,
                "curation_mode": config.curation_mode,
                "selection rule": config.selection_rule().describe(),
            }
            if iteration
            else {}
        ),
        data=sizes | {"stages": funnel},
        results=results or [],
        tags=["selftaught", "humpback", "instruction-backtranslation"],
        extra_sections=extra,
    )
