"""Stages never skip work silently: deleted output is redone, a rerun with other inputs says what differs and
how to redo it, --overwrite redoes a stage and what depends on it, --help shows the defaults that apply,
each M(k) card describes the data up to its own stage, and a resumed stage's throughput counts every
process's time. One test (or more) per case, on a tiny real model where a model is needed."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_backtranslate_e2e import PARAGRAPH

from selftaught.backtranslate import recipe
from selftaught.backtranslate.card import backtranslation_card
from selftaught.backtranslate.config import BacktranslateConfig
from selftaught.backtranslate.evaluation import evaluation_settings
from selftaught.backtranslate.runfolder import (
    RunFolder,
    StageClock,
    changed_settings,
    dependents,
    inputs_of,
    stage_command,
)
from selftaught.backtranslate.stages import STAGES, parse
from selftaught.cli import main, parse_configs
from selftaught.data.shards import read_parquet, read_shards, run_sharded, shard_seconds
from selftaught.training.sft import COMPLETE_MARKER, SFTSettings


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (folder / f"doc{i}.md").write_text(f"# Bread {i}\n\n{PARAGRAPH} Loaf {i}, a variation of its own.\n")
    return folder


def flags(run: Path, model: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        "--run_dir", str(run), "--base_model", str(model), "--corpus", str(corpus), "--seed_size", "6",
        "--min_chars", "100", "--max_chars", "700", "--max_instruction_tokens", "4", "--shard_size", "1",
        "--generation_batch_size", "4", "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--max_length", "256", "--learning_rate", "1e-3", "--final_learning_rate", "9e-4", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, tiny_student, corpus) -> Path:
    """A run folder through augment (seed, Myx, segments, instructions), made once for the module."""
    run = tmp_path_factory.mktemp("run") / "bt"
    for stage in ("seed", "train-backward", "segment", "augment"):
        main(["backtranslate", stage, *flags(run, tiny_student, corpus)])
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "bt")
    return tmp_path / "bt"


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# --- (a) deleted output is not finished --------------------------------------------------------------


@pytest.mark.slow
def test_a_stage_whose_output_was_deleted_runs_again(augmented, tiny_student, corpus, tmp_path, capsys):
    run = copy_run(augmented, tmp_path)
    rows = read_shards(run / "augment").to_list()
    shutil.rmtree(run / "augment")
    (run / "seed" / "pairs.parquet").unlink()
    main(["backtranslate", "seed", *flags(run, tiny_student, corpus)])
    main(["backtranslate", "augment", *flags(run, tiny_student, corpus)])
    out = capsys.readouterr().out
    assert "[seed] summary.json records it as finished, but its output (seed/pairs.parquet) is missing" in out
    assert "[augment] summary.json records it as finished, but its output (augment) is missing" in out
    assert (run / "seed" / "pairs.parquet").is_file()
    assert read_shards(run / "augment").to_list() == rows  # redone, seeded by shard: the same rows


def test_a_deleted_shard_makes_a_sharded_stage_unfinished(tmp_path):
    run = RunFolder(tmp_path)
    run_sharded([{"i": i} for i in range(4)], run.augment, 2, lambda rows, k: rows)
    assert run.is_whole("augment")
    next(run.augment.glob("shard-*.parquet")).unlink()
    assert not run.is_whole("augment")


# --- (b) a finished stage rerun with other inputs says so -------------------------------------------


def test_a_finished_stage_rerun_with_other_inputs_says_it_skipped_what_differs_and_how_to_redo(
    tmp_path, capsys
):
    run = tmp_path / "bt"
    main(["backtranslate", "seed", "--run_dir", str(run), "--seed_size", "8"])
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(json.dumps({"instruction": f"Q{i}?", "response": f"A{i}."}) + "\n" for i in range(20))
    )
    capsys.readouterr()
    main(["backtranslate", "seed", "--run_dir", str(run), "--seed_data", str(other), "--seed_size", "10"])
    out = capsys.readouterr().out
    assert "[seed] skipped: it finished earlier with other settings" in out
    assert (
        "seed_size: 8 then, 10 now" in out and "seed_data: 'the shipped oasst1-format seed set' then" in out
    )
    assert "seed_split" not in out  # only what differs
    assert "rerun `selftaught backtranslate seed` with --overwrite" in out
    assert summary(run)["seed"]["rows_out"] == 8  # the old pairs are kept, and said to be


def test_a_seed_file_of_the_same_name_with_other_content_is_said_to_differ(tmp_path, capsys):
    """A name is not an input: another seed.jsonl, in another folder, is other seed data."""
    run = tmp_path / "bt"

    def seed(folder: str, answer: str) -> list[str]:
        rows = [{"instruction": f"Q{i}?", "response": f"{answer} {i}."} for i in range(8)]
        data = write_jsonl(tmp_path / folder / "seed.jsonl", rows)
        return ["backtranslate", "seed", "--run_dir", str(run), "--seed_data", str(data)]

    main(seed("a", "Yes"))
    capsys.readouterr()
    main(seed("copy", "Yes"))
    assert "skipped" not in capsys.readouterr().out  # the same content elsewhere is the same input
    main(seed("b", "No"))
    out = capsys.readouterr().out
    assert "[seed] skipped: it finished earlier with other settings (seed_data_content: " in out
    assert "seed_data: " not in out  # the name did not change, the content did
    assert "rerun `selftaught backtranslate seed` with --overwrite" in out
    main([*seed("b", "No"), "--overwrite"])
    assert {p["response"].split()[0] for p in read_parquet(run / "seed" / "pairs.parquet")} == {"No"}


def test_a_corpus_whose_files_were_edited_is_said_to_differ(tmp_path, corpus, capsys):
    edited = shutil.copytree(corpus, tmp_path / "corpus")
    segment = ["backtranslate", "segment", "--run_dir", str(tmp_path / "bt"), "--corpus", str(edited)]
    segment += ["--min_chars", "100"]  # the fixture's documents are short
    main(segment)
    (edited / "doc0.md").write_text((edited / "doc0.md").read_text() + "\nOne more sentence.\n")
    capsys.readouterr()
    main(segment)
    out = capsys.readouterr().out
    assert "[segment] skipped" in out and "(corpus_content: " in out and "--overwrite" in out


def test_the_evaluation_records_its_files_by_content(tmp_path):
    run = RunFolder(tmp_path / "bt")
    settings = []
    for folder, prompt in (("a", "Say yes."), ("b", "Say no.")):
        prompts = write_jsonl(tmp_path / folder / "prompts.jsonl", [{"prompt": prompt}])
        config = BacktranslateConfig(run_dir=str(run.root), eval_prompts=str(prompts))
        settings.append(evaluation_settings(config, run, [], "base", 0))
    assert changed_settings(*settings).startswith("eval_prompts_content: ")
    assert "eval_prompts:" not in changed_settings(*settings)


# --- (c) one way to redo a stage and its dependents -------------------------------------------------


def test_overwrite_redoes_the_stage_and_discards_what_depends_on_it(tmp_path, capsys):
    run = tmp_path / "bt"
    main(["backtranslate", "seed", "--run_dir", str(run), "--seed_size", "8"])
    (run / "models" / "M0").mkdir(parents=True)  # a trained model and a curation that read the seed
    (run / "models" / "M0" / COMPLETE_MARKER).write_text("{}")
    lines = summary(run) | {
        "train-seed": {"rows_in": 8, "rows_out": 8},
        "segment": {"rows_in": 1, "rows_out": 1},
    }
    (run / "summary.json").write_text(json.dumps(lines))
    main(["backtranslate", "seed", "--run_dir", str(run), "--seed_size", "5", "--overwrite"])
    assert summary(run)["seed"]["rows_out"] == 5
    assert not (run / "models" / "M0").exists() and "train-seed" not in summary(run)
    assert "segment" in summary(run)  # the corpus does not depend on the seed
    assert "--overwrite: discarded train-seed" in capsys.readouterr().out


def test_the_stage_graph():
    known = ["seed", "train-seed", "train-backward", "segment", "augment", "curate_1", "select_1", "train_1",
             "curate_2", "select_2", "train_2", "evaluate"]  # fmt: skip
    assert dependents("select_1", known) == ["train_1", "curate_2", "evaluate", "select_2", "train_2"]
    assert set(dependents("train-backward", known)) == set(known) - {
        "seed",
        "train-seed",
        "segment",
        "train-backward",
    }
    assert dependents("select_2", known) == ["train_2", "evaluate"]


@pytest.mark.slow
def test_a_settings_mismatch_names_only_what_differs_before_any_model_loads(
    augmented, tiny_student, corpus, tmp_path, capsys
):
    run = copy_run(augmented, tmp_path)
    main(["backtranslate", "train-seed", *flags(run, tiny_student, corpus)])
    main(["backtranslate", "curate", "--iteration", "1", *flags(run, tiny_student, corpus)])
    last = sorted((run / "iteration1" / "curate").glob("shard-*.parquet"))[-1]
    last.unlink()  # an interrupted curation...
    weights = run / "models" / "M0" / "model.safetensors"
    weights.rename(tmp_path / "weights")  # ...whose rater could not even be loaded now
    as_pmi = ["backtranslate", "curate", "--iteration", "1", "--curation_mode", "pmi"]
    with pytest.raises(SystemExit) as exit_info:
        main([*as_pmi, *flags(run, tiny_student, corpus)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "params.curation_mode: 'rubric' there, 'pmi' now" in err
    assert "params.rater" not in err and "input_fingerprint" not in err  # only the setting that differs
    assert "rerun `selftaught backtranslate curate --iteration 1` with --overwrite" in err
    # the flag the error advises exists: it redoes the stage (here with the rater restored)
    (tmp_path / "weights").rename(weights)
    main([*as_pmi, "--overwrite", *flags(run, tiny_student, corpus)])
    rows = read_shards(run / "iteration1" / "curate").to_list()
    assert rows and all(r["curation_mode"] == "pmi" and "pmi" in r for r in rows)


# --- (d) --help shows the defaults that apply --------------------------------------------------------


def test_help_shows_the_defaults_that_apply_and_the_demo_preset_beside_them(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["backtranslate", "seed", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "[embedded demo: 64] (default: 3200)" in out  # seed_size
    assert "[embedded demo: 1200] (default: 3000)" in out  # max_chars
    assert "with one of --config, --base_model, --seed_data, --corpus given, each flag's default" in out


# --- (e) each card describes the data up to its own stage ---------------------------------------------


def test_each_card_describes_the_data_up_to_its_own_stage(tmp_path):
    lines = {
        stage: {"rows_in": 10, "rows_out": 5, "settings": {"curation_mode": "pmi"}, "rule": "pmi >= 0"}
        for stage in ("seed", "train-seed", "train-backward", "segment", "augment", "curate_1", "select_1",
                      "train_1", "curate_2", "select_2", "train_2")
    }  # fmt: skip
    config = BacktranslateConfig(run_dir=str(tmp_path), base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    m1 = backtranslation_card(config, SFTSettings(), "M1", 1, {}, lines)
    assert set(m1.data["stages"]) == {"seed", "train-seed", "train-backward", "segment", "augment",
                                      "curate_1", "select_1", "train_1"}  # fmt: skip
    assert "Iteration 1" in m1.extra_sections["Curation"]
    assert "Iteration 2" not in m1.extra_sections["Curation"]
    m0 = backtranslation_card(config, SFTSettings(), "M0", 0, {}, lines)
    assert set(m0.data["stages"]) == {"seed", "train-seed"}


# --- (f) a resumed stage's throughput counts every process's time ------------------------------------


def test_a_resumed_sharded_stage_counts_the_time_of_every_process(tmp_path):
    rows = [{"i": i} for i in range(6)]

    def slow(chunk: list[dict], shard: int) -> list[dict]:
        time.sleep(0.3)
        if shard == 2 and not crashed:
            crashed.append(shard)
            raise RuntimeError("killed")
        return chunk

    crashed: list[int] = []
    with pytest.raises(RuntimeError):
        run_sharded(rows, tmp_path, 2, slow)  # commits shards 0 and 1, then dies
    run_sharded(rows, tmp_path, 2, slow)  # resumes: shard 2 only
    assert shard_seconds(tmp_path) >= 0.9  # 0.3 s for each of the three shards, across both processes
    # the first process's 0.6 s are not lost: a one-process count would give about 0.6 s (the crash's
    # 0.3 s on shard 2 is the work the second process redid)


def test_a_resumed_training_stage_counts_the_time_of_every_process(tmp_path):
    ledger = tmp_path / "train_1.jsonl"
    first = StageClock(ledger)
    time.sleep(0.2)
    first.on_save(
        None, type("State", (), {"is_world_process_zero": True})(), None
    )  # a checkpoint, then a kill
    second = StageClock(ledger)
    time.sleep(0.1)
    assert second.total() >= 0.3


# --- (f) select keeps no pair without a score, and counts them ------------------------------------------


def test_select_never_keeps_an_unscored_pair_and_counts_it(tmp_path, capsys):
    run = RunFolder(tmp_path / "bt")
    curated = [
        {"instruction": "Name a colour.", "response": "Blue, like the sky.", "pmi": 0.3, "echoed_share": 0.0,
         "unscored": None},
        {"instruction": "Name a colour.", "response": "Buy paint now.", "pmi": -0.2, "echoed_share": 0.0,
         "unscored": None},
        {"instruction": "Name a fruit.", "response": "An apple.", "pmi": None, "echoed_share": 0.0,
         "unscored": "non-finite pmi score"},
        # curated before empty texts went unscored: PMI exactly 0, which pmi_no_echo >= 0 kept
        {"instruction": "", "response": "Blue.", "pmi": 0.0, "echoed_share": 0.0, "unscored": None},
    ]  # fmt: skip
    run_sharded([r | {"curation_mode": "pmi"} for r in curated], run.curate(1), 4, lambda rows, k: rows)
    main(["backtranslate", "select", "--run_dir", str(run.root)])  # the demo's rule: pmi_no_echo >= 0
    assert [r["response"] for r in read_parquet(run.selected(1))] == ["Blue, like the sky."]
    record = summary(run.root)["select_1"]
    assert record["unscored"] == 2
    assert record["unscored_reasons"] == {"non-finite pmi score": 1, "empty instruction": 1}
    assert "2 pairs have no pmi_guarded and are never kept" in capsys.readouterr().out


# --- (g) one stage table, read by the run folder and the CLI ------------------------------------------


def test_every_stage_the_table_names_is_a_command_the_cli_runs(capsys):
    """Each stage's command, as the run folder's messages advise it, is one the CLI accepts (through its
    real argparse, the iteration included) and runs with the function the table names."""
    with pytest.raises(SystemExit):
        main(["backtranslate"])
    usage = capsys.readouterr().out
    for stage in STAGES.values():
        for k in (1, 2) if stage.iterated else (0,):
            command, *flags = stage_command(stage.name(k)).split()
            assert command == stage.command and f"{command}," in usage.replace("}", ",")
            config, _ = parse_configs((BacktranslateConfig, SFTSettings), flags, f"backtranslate {command}")
            assert config.iteration == (k or 1)
            assert callable(getattr(recipe, stage.function))


def test_the_run_folder_reads_what_each_stage_writes_and_reads_from_the_table(tmp_path):
    run = RunFolder(tmp_path)
    known = [s.name(k) for s in STAGES.values() for k in ((1, 2) if s.iterated else (0,))]
    written: dict[Path, str] = {}
    for name in known:
        stage, k = parse(name)
        assert run.outputs(name)[:-1] == stage.writes(run, k)  # the last: its timing ledger, if any
        assert inputs_of(name, known) == stage.reads(k, known)
        assert set(inputs_of(name, known)) <= set(known)  # every input is a stage of the table
        for path in stage.writes(run, k):
            assert path.is_relative_to(tmp_path) and written.setdefault(path, name) == name  # one writer


def older_run_folder(run: Path) -> None:
    """A run folder as versions before the stage table left it: training stages named by their model."""
    (run / "models" / "M0").mkdir(parents=True)
    (run / "models" / "M0" / COMPLETE_MARKER).write_text("{}")
    (run / "timing").mkdir()
    (run / "timing" / "train_M0.jsonl").write_text('{"pid": 1, "seconds": 2.0}\n')
    lines = {"train_M0": {"rows_in": 8, "rows_out": 8}, "segment": {"rows_in": 1, "rows_out": 1}}
    (run / "summary.json").write_text(json.dumps(summary(run) | lines))


def test_a_training_stage_an_older_version_finished_is_still_finished(tmp_path, tiny_student, capsys):
    run = tmp_path / "bt"
    main(["backtranslate", "seed", "--run_dir", str(run), "--seed_size", "4"])
    older_run_folder(run)
    main(["backtranslate", "train-seed", "--run_dir", str(run), "--base_model", str(tiny_student)])
    assert "[train-seed] rows in" not in capsys.readouterr().out  # not trained again
    assert (run / "models" / "M0" / COMPLETE_MARKER).read_text() == "{}"
    assert RunFolder(run).read_summary()["train-seed"] == {"rows_in": 8, "rows_out": 8}
    # its ledger takes today's name, so a resumed training would add the seconds spent before
    assert (run / "timing" / "train-seed.jsonl").read_text() == '{"pid": 1, "seconds": 2.0}\n'


def test_overwrite_discards_what_an_older_version_recorded_under_its_old_name(tmp_path, capsys):
    run = tmp_path / "bt"
    main(["backtranslate", "seed", "--run_dir", str(run), "--seed_size", "8"])
    older_run_folder(run)
    main(["backtranslate", "seed", "--run_dir", str(run), "--seed_size", "5", "--overwrite"])
    assert "--overwrite: discarded train-seed" in capsys.readouterr().out
    assert not (run / "models" / "M0").exists() and not (run / "timing" / "train-seed.jsonl").exists()
    assert set(summary(run)) == {"seed", "segment"}
