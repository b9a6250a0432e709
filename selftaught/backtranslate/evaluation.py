"""The evaluation a backtranslation run ends with: base, M0, M1, M2 on held-out data, with intervals.

Held out means never trained on: the seed pairs the seed sample left out (or the user's files), and
the corpus documents `segment` held out (new_domain.py), each asked about by a user's question. Each
model's held-out gold-answer NLL on both (the seed's domain, and the new domain the run should teach),
the relevance (PMI under the base model) and degeneration of its greedy
answers, the base model's judge verdicts, and the raters' curation AUC; every comparison (M(k) against
M(k-1) and against the base) with a paired 95% bootstrap interval (`evaluate.suite`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from selftaught.backtranslate.card import backtranslation_card, train_sizes
from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.examples import SEED_TAG
from selftaught.backtranslate.new_domain import corpus_documents, held_out_documents, new_domain_pairs
from selftaught.backtranslate.runfolder import RunFolder, changed_settings, holds_run_folder, say_skipped
from selftaught.backtranslate.stages import EVALUATE, SEED, SEGMENT, SELECT
from selftaught.data.loading import content_fingerprint
from selftaught.data.seed_pairs import BUILTIN_OASST_SEED, load_seed_pairs
from selftaught.data.shards import read_parquet, write_json, write_parquet
from selftaught.evaluate.config import CurationEvalConfig, JudgeEvalConfig
from selftaught.evaluate.curation import mismatched_labels, read_labelled
from selftaught.evaluate.judge import read_requests
from selftaught.evaluate.results import eval_rows
from selftaught.evaluate.suite import ModelSuite, summary_intervals, summary_numbers
from selftaught.models import load_tokenizer
from selftaught.models.naming import model_label
from selftaught.training.model_card import write_model_card
from selftaught.training.sft import COMPLETE_MARKER, SFTSettings

SAYS = f"[{EVALUATE.name()}]"  # what the evaluation's messages start with


def held_out_seed_pairs(config: BacktranslateConfig, settings: SFTSettings) -> list[dict]:
    """Seed pairs that the seed sample left out: first turns no model of the run was trained on."""
    run = RunFolder(config.run_dir)
    every, _ = load_seed_pairs(
        config.seed_data or str(BUILTIN_OASST_SEED), None, settings.seed, config.seed_split
    )
    used = {p["id"] for p in read_parquet(run.input(SEED.name()))}
    return [p for p in every if p["id"] not in used]


def new_domain_gold(config: BacktranslateConfig, settings: SFTSettings, base: str) -> list[dict]:
    """The held-out corpus documents as gold pairs (new_domain.py), less any that this run's segments
    came from after all (a run segmented before documents were held out): those are dropped, saying so."""
    run = RunFolder(config.run_dir)
    documents = held_out_documents(corpus_documents(config), config, settings.seed)
    segmented = {s["source"] for s in read_parquet(run.input(SEGMENT.name()))}
    unseen = [d for d in documents if d["source"] not in segmented]
    if len(unseen) < len(documents):
        print(
            f"{SAYS} {len(documents) - len(unseen)} of the {len(documents)} held-out corpus documents "
            "were segmented for augmentation (the segment stage ran before they were held out): not "
            "evaluated on. Rerun `selftaught backtranslate segment --overwrite` to hold them out."
        )
    if not unseen:
        return []
    return new_domain_pairs(unseen, config, settings.seed, load_tokenizer(base, config.trust_remote_code))


def evaluation_configs(
    config: BacktranslateConfig, folder: Path, base: str
) -> tuple[JudgeEvalConfig, list[CurationEvalConfig]]:
    """The judge (the base model, answers under the seed tag) and one curation config per rater mode."""
    shared = {
        "output_dir": str(folder),
        "split": config.seed_split,
        "batch_size": config.generation_batch_size,
        "trust_remote_code": config.trust_remote_code,
    }
    judge = JudgeEvalConfig(
        **shared,
        limit=config.eval_prompt_count,
        prompts=config.eval_prompts or "held-out seed prompts",
        baseline=base,
        judge=base,
        system_prompt=SEED_TAG,
        max_new_tokens=config.eval_max_new_tokens,
    )
    curation = CurationEvalConfig(
        **shared,
        limit=config.eval_curation_pairs,
        data=config.eval_curation_data or "held-out seed pairs and mismatched pairs",
        max_reasoning_tokens=config.max_reasoning_tokens,
        max_scored_tokens=config.max_scored_tokens,
    )
    # the raters M0 .. M(n-1) score in the run's modes; backward is Myx's score, not theirs
    modes = [m for m in config.curation_modes if m != "backward"]
    return judge, [replace(curation, mode=m) for m in modes]


def evaluation_inputs(
    config: BacktranslateConfig, settings: SFTSettings, judge: JudgeEvalConfig, curation
) -> tuple[list[str], list[dict], list[dict]]:
    """(judge prompts, held-out gold pairs, labelled pairs): the user's files, else left-out seed pairs."""
    held_out = held_out_seed_pairs(config, settings)
    requests = (
        read_requests(config.eval_prompts, judge)
        if config.eval_prompts
        else [p["instruction"] for p in held_out]
    )
    if config.eval_curation_data:
        labelled = read_labelled(config.eval_curation_data, curation)
    else:
        labelled = mismatched_labels(held_out[: config.eval_curation_pairs // 2])
    gold = held_out[: config.eval_heldout_pairs]
    return requests[: config.eval_prompt_count], gold, labelled[: config.eval_curation_pairs]


def evaluation_settings(
    config: BacktranslateConfig, run: RunFolder, names: list[str], base: str, seed: int
) -> dict:
    """What the kept evaluation pieces depend on: the models (a retrained one has a new identity), the
    evaluation's settings, and the files it reads, by name (never a path of this machine) and by content,
    the seed data's too (its rows that the seed sample left out are the held-out pairs), and the corpus's
    (with the seed, it decides the held-out documents)."""
    files = {"eval_prompts": config.eval_prompts, "eval_curation_data": config.eval_curation_data}
    return {
        "base_model": model_label(base),
        **{name: run.identity(run.model(name)) for name in names},
        **{name: model_label(source) if source else None for name, source in files.items()},
        **{f"{name}_content": content_fingerprint(source) for name, source in files.items()},
        "seed_data_content": content_fingerprint(config.seed_data or str(BUILTIN_OASST_SEED)),
        **{
            k: getattr(config, k)
            for k in ("eval_prompt_count", "eval_curation_pairs", "eval_heldout_pairs", "eval_max_new_tokens")
        },
        **{k: getattr(config, k) for k in ("eval_new_domain_documents", "eval_new_domain_tokens")},
        "corpus_content": content_fingerprint(config.corpus),
        "seed": seed,
        "curation_mode": config.curation_mode,
        "max_scored_tokens": config.max_scored_tokens,
        "max_reasoning_tokens": config.max_reasoning_tokens,
    }


def evaluation_is_current(run: RunFolder, settings: dict) -> bool:
    """False, saying so, when a finished evaluation was made with other settings (it is kept, as every stage's
    output is, until `evaluate --overwrite`). An unfinished one made with other settings is discarded, so that
    its pieces never mix with new ones; a new one records its settings before its first piece."""
    record = run.evaluation / "settings.json"
    before = json.loads(record.read_text()) if record.exists() else None
    if before is not None and (changes := changed_settings(before, settings)):
        if run.eval_results.exists():
            say_skipped(EVALUATE.name(), changes, [])
            return False
        print(f"{SAYS} discarding the unfinished evaluation made with other settings ({changes})")
        shutil.rmtree(run.evaluation)
    if not run.evaluation.exists():  # pieces kept from before settings were recorded: nothing to compare
        write_json(record, settings)
    return True


@holds_run_folder(EVALUATE)
def stage_evaluate(config: BacktranslateConfig, settings: SFTSettings, run: RunFolder, k: int) -> dict:
    """Every finished model of the run on held-out data (see the module docstring).

    Writes <run_dir>/evaluation/ (per-evaluation JSON and Parquet, each kept and reused by a rerun,
    and comparisons.json), <run_dir>/eval_results.json ({label: {metric: number}}, with "intervals" and
    "comparisons") and the results onto the M(k) cards. Keeps its own record of what it ran with
    (`evaluation_is_current`): summary.json has no line for it.
    """
    names = [f"M{k}" for k in range(config.iterations + 1) if (run.model(f"M{k}") / COMPLETE_MARKER).exists()]
    models = {"base": config.base()} | {name: str(run.model(name)) for name in names}
    if not evaluation_is_current(run, evaluation_settings(config, run, names, models["base"], settings.seed)):
        return json.loads(run.eval_results.read_text())
    judge, curation = evaluation_configs(config, run.evaluation, models["base"])
    requests, gold, labelled = evaluation_inputs(config, settings, judge, curation[0] if curation else judge)
    new_domain = new_domain_gold(config, settings, models["base"])
    write_parquet(run.evaluation / "new_domain_pairs.parquet", new_domain)  # the questions, to read
    print(
        f"{SAYS} {len(requests)} prompts, {len(gold)} held-out gold pairs, {len(new_domain)} held-out "
        f"corpus documents, {len(labelled)} labelled pairs"
    )
    started = time.perf_counter()
    configs = (judge, curation)
    suite = ModelSuite(
        run.evaluation, models, "base", requests, gold, labelled, configs, run.root, new_domain
    )
    results = suite.run([f"M{k}" for k in range(config.iterations) if f"M{k}" in models])
    comparisons = suite.comparisons(list(models))
    numbers = summary_numbers(results)
    write_json(
        run.eval_results, numbers | {"intervals": summary_intervals(results), "comparisons": comparisons}
    )
    summary = run.read_summary()
    for name in names:
        rows = eval_rows(results[name]) + eval_rows(results["base"], model="base")
        k = int(name[1:])
        seed, selected = summary[SEED.name()]["rows_out"], summary[SELECT.name(k)]["rows_out"] if k else None
        sizes = train_sizes(seed, selected)
        card = backtranslation_card(config, settings, name, k, sizes, summary, rows, comparisons)
        write_model_card(run.model(name), card)
    print(f"{SAYS} {', '.join(models)}: {time.perf_counter() - started:.1f} s, see {run.eval_results}")
    return numbers
