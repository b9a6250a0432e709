"""The `selftaught` command: one subcommand per recipe; each flag is a field of that recipe's config.

`--config run.yaml` reads the same names as keys; flags given on the command line override them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser


def parse_configs(
    config_classes: tuple, argv: list[str], prog: str, preset: tuple[Path, tuple[str, ...]] | None = None
) -> tuple:
    """One instance per class from `--config FILE` (YAML) and flags, the flags winning. `preset`: the
    embedded default's YAML and the flags that turn it off, for `--help` to show (see `describe_preset`)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(config_classes, prog=prog)
    parser.add_argument("--config", type=Path, help="YAML file whose keys are this command's flags.")
    if preset is not None:
        describe_preset(parser, *preset)
    if known.config is not None:
        values = yaml.safe_load(known.config.read_text()) or {}
        fields = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - fields)
        if unknown:
            parser.error(f"{known.config}: unknown keys {unknown}; every key must be a flag of `{prog}`")
        parser.set_defaults(**values)
    _, unknown = parser.parse_known_args(rest)
    if unknown:
        parser.error(unknown_flags_message(config_classes, unknown, prog))
    try:
        return tuple(parser.parse_args_into_dataclasses(args=rest)[: len(config_classes)])  # then --config
    except ValueError as err:  # a config refused a value (its __post_init__): named, no traceback
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)


def unknown_flags_message(config_classes: tuple, unknown: list[str], prog: str) -> str:
    """Name the flags the command does not know, and say why where a config explains (`refused_flags`)."""
    flags = [arg for arg in unknown if arg.startswith("-")] or unknown
    names = {flag.lstrip("-").split("=")[0].replace("-", "_") for flag in flags}
    reasons = dict.fromkeys(
        why for c in config_classes for name, why in getattr(c, "refused_flags", {}).items() if name in names
    )
    return " ".join([f"unknown flags {flags}: `{prog} --help` lists every flag.", *reasons])


def parse_config(
    config_class, argv: list[str], prog: str, preset: tuple[Path, tuple[str, ...]] | None = None
):
    """A `config_class` from `--config FILE` (YAML) and flags, the flags winning."""
    return parse_configs((config_class,), argv, prog, preset)[0]


EMBEDDED_FLAGS = ("--config", "--student", "--teacher", "--data")
HELP_FLAGS = ("-h", "--help")


def with_preset(argv: list[str], preset: Path, flags: tuple[str, ...] = EMBEDDED_FLAGS) -> list[str]:
    """No model, data or config named: run the embedded default, whose settings `preset` holds. `--help`
    is left as it is, so that it shows the defaults a named model or data gets (and the preset beside
    them, `describe_preset`)."""
    named = any(arg.split("=")[0] in flags + HELP_FLAGS for arg in argv)
    return argv if named else ["--config", str(preset), *argv]


def describe_preset(parser: argparse.ArgumentParser, preset: Path, flags: tuple[str, ...]) -> None:
    """Show, in `--help`, both defaults that can apply: each flag's own (a named model, data or corpus)
    and, in brackets, the embedded demo preset's (none of `flags` given)."""
    values = yaml.safe_load(preset.read_text()) or {}
    for action in parser._actions:
        if action.dest in values:
            action.help = f"{action.help or ''} [embedded demo: {values[action.dest]}]"
    named = ", ".join(f for f in flags if "-" not in f[2:])  # each flag once, in its underscore form
    parser.epilog = (
        f"Defaults: with one of {named} given, each flag's default below applies. With none of them, "
        f"the command runs the embedded demo ({preset.name}), whose values are shown in brackets."
    )


def distill(argv: list[str]) -> None:
    from selftaught.distill.config import DistillConfig
    from selftaught.distill.recipe import run_distillation

    preset = Path(__file__).parent / "distill" / "default.yaml"
    config = parse_config(
        DistillConfig, with_preset(argv, preset), "selftaught distill", (preset, EMBEDDED_FLAGS)
    )
    results = run_distillation(config)
    print_summary(config.output_dir, results)


def print_summary(output_dir: str, results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from selftaught.evaluate.intervals import excludes_zero
    from selftaught.training.model_card import signed_interval

    columns = [k for k in ("teacher", "student_before", "student_after") if k in results]
    if columns:
        table = Table(title="held-out evaluation")
        table.add_column("metric")
        for column in columns:
            table.add_column(column.replace("_", " "), justify="right")
        metrics = dict.fromkeys(m for c in columns for m in results[c])
        for metric in metrics:
            table.add_row(
                metric, *(f"{results[c][metric]:.4g}" if metric in results[c] else "-" for c in columns)
            )
        Console().print(table)
    if changes := results.get("comparisons"):
        table = Table(title="student after - before (95% paired interval over the held-out prompts)")
        for column in ("metric", "change", "95% interval", "verdict"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for c in changes:
            moved = "moved" if excludes_zero(c["ci95"]) else "no change"
            table.add_row(c["metric"], f"{c['difference']:+.3g}", signed_interval(c["ci95"]), moved)
        Console().print(table)
    print(f"model, card, metrics: {output_dir}")
    if results.get("warning"):  # the last thing said: the answers degenerated, or the student drifted away
        Console().print(results["warning"], style="bold red", markup=False)


BACKTRANSLATE_FLAGS = ("--config", "--base_model", "--base-model", "--seed_data", "--seed-data", "--corpus")


def backtranslate(argv: list[str]) -> None:
    from selftaught.backtranslate import recipe
    from selftaught.backtranslate.config import BacktranslateConfig
    from selftaught.training.sft import SFTSettings

    stages = {
        "seed": recipe.stage_seed,
        "train-seed": recipe.stage_train_seed,
        "train-backward": recipe.stage_train_backward,
        "segment": recipe.stage_segment,
        "augment": recipe.stage_augment,
        "curate": lambda c, s: recipe.stage_curate(c, s, c.iteration),
        "select": lambda c, s: recipe.stage_select(c, s, c.iteration),
        "train": lambda c, s: recipe.stage_train(c, s, c.iteration),
        "evaluate": recipe.stage_evaluate,
        "run": recipe.run_all,
    }
    if not argv or argv[0] not in stages:
        print(f"usage: selftaught backtranslate {{{','.join(stages)}}} [--config FILE] [flags]")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    preset = Path(__file__).parent / "backtranslate" / "default.yaml"
    prog = f"selftaught backtranslate {argv[0]}"
    config, settings = parse_configs(
        (BacktranslateConfig, SFTSettings),
        with_preset(argv[1:], preset, BACKTRANSLATE_FLAGS),
        prog,
        (preset, BACKTRANSLATE_FLAGS),
    )
    stages[argv[0]](config, settings)
    print(f"run folder: {config.run_dir}")


def evaluate(argv: list[str]) -> None:
    """`selftaught eval <task>`: one evaluation; writes <output_dir>/<task>.json and prints a table."""
    from selftaught.evaluate.results import print_result
    from selftaught.evaluate.tasks import TASKS

    if not argv or argv[0] not in TASKS:
        print(f"usage: selftaught eval {{{','.join(TASKS)}}} [--config FILE] [flags]")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    config_class, run = TASKS[argv[0]]
    config = parse_config(config_class, argv[1:], f"selftaught eval {argv[0]}")
    print_result(run(config))
    print(f"results: {Path(config.output_dir) / argv[0]}.json")


def report(argv: list[str]) -> None:
    """`selftaught report RUN_DIR`: RUN_DIR/report/index.html, one self-contained page showing the run."""
    from selftaught.report import write_report

    parser = argparse.ArgumentParser(prog="selftaught report", description=report.__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder of `selftaught distill` or `backtranslate`")
    print(f"report: {write_report(parser.parse_args(argv).run_dir)}")


COMMANDS = {"distill": distill, "backtranslate": backtranslate, "eval": evaluate, "report": report}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: selftaught {{{','.join(COMMANDS)}}} [--config FILE] [flags]   (--help per command)")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from selftaught.data.loading import DataError
    from selftaught.data.shards import StageMismatchError
    from selftaught.generation.openai_engine import EchoUnsupportedError
    from selftaught.models.check import ModelArgumentError
    from selftaught.models.vocab import TokenizerMismatchError
    from selftaught.scoring.curation import NonFiniteScoresError

    try:
        COMMANDS[argv[0]](argv[1:])
    except (
        DataError,
        ModelArgumentError,
        TokenizerMismatchError,
        StageMismatchError,
        FileNotFoundError,
        EchoUnsupportedError,
        NonFiniteScoresError,
    ) as err:
        print(f"selftaught {argv[0]}: error: {err}", file=sys.stderr)  # the message says what to do
        sys.exit(2)


if __name__ == "__main__":
    main()
