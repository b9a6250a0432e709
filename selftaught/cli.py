"""The `selftaught` command: one subcommand per recipe; each flag is a field of that recipe's config.

`--config run.yaml` reads the same names as keys; flags given on the command line override them.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from pathlib import Path
from typing import NoReturn

import yaml
from transformers import HfArgumentParser

from selftaught.arguments import as_field_type, type_name
from selftaught.distill.results import DistillResults


class OneLineErrors:
    """argparse's errors in one line, `<prog>: error: <message>`, exit 2. argparse would print the usage
    first, which for a command of a hundred flags buries the message; `--help` shows it."""

    prog: str

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class FlagParser(OneLineErrors, argparse.ArgumentParser):
    pass


class ConfigParser(OneLineErrors, HfArgumentParser):
    pass


def parse_configs(
    config_classes: tuple, argv: list[str], prog: str, preset: tuple[Path, tuple[str, ...]] | None = None
) -> tuple:
    """One instance per class from `--config FILE` (YAML) and flags, the flags winning. `preset`: the
    embedded default's YAML and the flags that turn it off, for `--help` to show (see `describe_preset`).

    Every value is checked here, before anything loads: a YAML value against its field's type, and each
    config's own checks (`__post_init__`), whose error names the YAML file when the value came from it."""
    pre = FlagParser(prog=prog, add_help=False)
    pre.add_argument("--config", type=Path)
    known, rest = pre.parse_known_args(argv)
    parser = ConfigParser(config_classes, prog=prog)
    parser.add_argument("--config", type=Path, help="YAML file whose keys are this command's flags.")
    if preset is not None:
        describe_preset(parser, *preset)
    values = {} if known.config is None else read_yaml_config(known.config, parser, config_classes)
    parser.set_defaults(**values)
    _, unknown = parser.parse_known_args(rest)
    if unknown:
        parser.error(unknown_flags_message(config_classes, unknown, prog))
    try:
        return tuple(parser.parse_args_into_dataclasses(args=rest)[: len(config_classes)])  # then --config
    except ValueError as err:  # a config's own check, or one of transformers' TrainingArguments
        given = flags_given(parser, rest)
        from_file = [k for k in values if k not in given and re.search(rf"\b{re.escape(k)}\b", str(err))]
        source = ", ".join(f"{key}: {values[key]}" for key in from_file)
        parser.error(f"{err} ({known.config}: {source})" if from_file else str(err))


def read_yaml_config(path: Path, parser: argparse.ArgumentParser, config_classes: tuple) -> dict:
    """The settings of a `--config` file, each checked against its field's type. argparse's `set_defaults`
    passes a default on unchecked, so a wrong type would otherwise fail once the models had loaded."""
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        parser.error(f"--config {path}: cannot be read ({getattr(err, 'strerror', None) or err})")
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        parser.error(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err}); fix that line")
    if values is None:
        return {}
    if not isinstance(values, dict):
        parser.error(f"{path}: expected `key: value` lines, one per flag, got a {type(values).__name__}")
    fields = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - fields)
    if unknown:
        parser.error(f"{path}: unknown keys {unknown}; every key must be a flag of `{parser.prog}`")
    hints = {name: hint for c in config_classes for name, hint in typing.get_type_hints(c).items()}
    typed = {}
    for key, value in values.items():
        try:
            typed[key] = as_field_type(value, hints[key]) if key in hints else value
        except TypeError:
            parser.error(f"{path}: {key}: expected {type_name(hints[key])}, got {value!r}")
    return typed


def flags_given(parser: argparse.ArgumentParser, args: list[str]) -> set[str]:
    """The fields the command line sets (which a YAML value of the same name does not)."""
    options = parser._option_string_actions
    return {options[a.split("=")[0]].dest for a in args if a.split("=")[0] in options}


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
    """`selftaught distill [flags]` trains; `selftaught distill cache-teacher [flags]` caches a teacher."""
    if argv and argv[0] == "cache-teacher":
        cache_teacher(argv[1:])
        return
    from selftaught.distill.config import DistillConfig
    from selftaught.distill.recipe import run_distillation

    preset = Path(__file__).parent / "distill" / "default.yaml"
    config = parse_config(
        DistillConfig, with_preset(argv, preset), "selftaught distill", (preset, EMBEDDED_FLAGS)
    )
    results = run_distillation(config)
    print_summary(config.output_dir, results)


def cache_teacher(argv: list[str]) -> None:
    """`selftaught distill cache-teacher`: the teacher's top-K log-probs for every training completion."""
    from selftaught.distill.cache_teacher import COMMAND, cache_teacher
    from selftaught.distill.config import CacheTeacherConfig
    from selftaught.generation.base import EngineSettings

    config, settings = parse_configs((CacheTeacherConfig, EngineSettings), argv, COMMAND)
    summary = cache_teacher(config, settings)
    print(
        f"teacher cache: {summary['completions']} completions, {summary['completion_tokens']} tokens, "
        f"{summary['bytes_per_completion_token']:.0f} bytes per completion token on disk: {config.output_dir}"
    )


def print_summary(output_dir: str, results: DistillResults) -> None:
    from rich.console import Console
    from rich.table import Table

    from selftaught.evaluate.intervals import excludes_zero
    from selftaught.training.model_card import signed_interval

    evaluated = results.evaluated()
    if columns := list(evaluated):
        table = Table(title="held-out evaluation")
        table.add_column("metric")
        for column in columns:
            table.add_column(column.replace("_", " "), justify="right")
        metrics = dict.fromkeys(m for c in columns for m in evaluated[c])
        for metric in metrics:
            table.add_row(
                metric, *(f"{evaluated[c][metric]:.4g}" if metric in evaluated[c] else "-" for c in columns)
            )
        Console().print(table)
    if changes := results.comparisons:
        table = Table(title="student after - before (95% paired interval over the held-out prompts)")
        for column in ("metric", "change", "95% interval", "verdict"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for c in changes:
            moved = "moved" if excludes_zero(c["ci95"]) else "no change"
            table.add_row(c["metric"], f"{c['difference']:+.3g}", signed_interval(c["ci95"]), moved)
        Console().print(table)
    print(f"model, card, metrics: {output_dir}")
    if note := results.task_note():
        Console().print(note, style="yellow", markup=False)
    if results.warning:  # the last thing said: the answers degenerated, or the student drifted away
        Console().print(results.warning, style="bold red", markup=False)


BACKTRANSLATE_FLAGS = ("--config", "--base_model", "--base-model", "--seed_data", "--seed-data", "--corpus")


def backtranslate(argv: list[str]) -> None:
    from selftaught.backtranslate import recipe
    from selftaught.backtranslate.config import BacktranslateConfig
    from selftaught.backtranslate.stages import STAGES
    from selftaught.training.sft import SFTSettings

    commands = [*STAGES, "run"]
    if not argv or argv[0] not in commands:
        print(f"usage: selftaught backtranslate {{{','.join(commands)}}} [--config FILE] [flags]")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    preset = Path(__file__).parent / "backtranslate" / "default.yaml"
    prog = f"selftaught backtranslate {argv[0]}"
    config, settings = parse_configs(
        (BacktranslateConfig, SFTSettings),
        with_preset(argv[1:], preset, BACKTRANSLATE_FLAGS),
        prog,
        (preset, BACKTRANSLATE_FLAGS),
    )
    if argv[0] == "run":
        recipe.run_all(config, settings)
    else:
        stage = STAGES[argv[0]]
        getattr(recipe, stage.function)(config, settings, *([config.iteration] if stage.iterated else []))
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

    parser = FlagParser(prog="selftaught report", description=report.__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder of `selftaught distill` or `backtranslate`")
    print(f"report: {write_report(parser.parse_args(argv).run_dir)}")


COMMANDS = {"distill": distill, "backtranslate": backtranslate, "eval": evaluate, "report": report}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: selftaught {{{','.join(COMMANDS)}}} [--config FILE] [flags]   (--help per command)")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from selftaught.arguments import ArgumentError
    from selftaught.data.folder_lock import FolderInUseError
    from selftaught.data.loading import DataError
    from selftaught.data.shards import StageMismatchError
    from selftaught.distill.teachers import TeacherUnavailableError
    from selftaught.generation.base import TooFewLogprobsError
    from selftaught.generation.openai_engine import (
        EchoUnsupportedError,
        PromptLogprobsUnsupportedError,
    )
    from selftaught.generation.openai_engine import (
        TokenizerMismatchError as ServedTokenizerMismatchError,
    )
    from selftaught.models.check import ModelArgumentError
    from selftaught.models.vocab import TokenizerMismatchError
    from selftaught.scoring.curation import NonFiniteScoresError
    from selftaught.training.distributed import process_group_teardown

    with process_group_teardown():  # under `accelerate launch`: each process ends with its own exit code
        try:
            COMMANDS[argv[0]](argv[1:])
        except (
            ArgumentError,
            DataError,
            ModelArgumentError,
            TokenizerMismatchError,
            StageMismatchError,
            FileNotFoundError,
            EchoUnsupportedError,
            PromptLogprobsUnsupportedError,
            ServedTokenizerMismatchError,
            TooFewLogprobsError,
            TeacherUnavailableError,
            FolderInUseError,
            NonFiniteScoresError,
        ) as err:
            print(f"selftaught {argv[0]}: error: {err}", file=sys.stderr)  # the message says what to do
            sys.exit(2)
        except KeyboardInterrupt as stop:  # Ctrl-C: one line, where the run stopped and how to go on
            from selftaught.training.checkpoints import stopped_message

            print(f"selftaught {argv[0]}: {stopped_message(stop, ['selftaught', *argv])}", file=sys.stderr)
            sys.exit(130)


if __name__ == "__main__":
    main()
