"""The `selftaught` command line: flags and YAML configs become a `DistillConfig`; the embedded preset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

import selftaught
from selftaught.cli import EMBEDDED_FLAGS, main, parse_config, with_preset
from selftaught.distill.config import DistillConfig

PROG = "selftaught distill"
PRESET = Path(selftaught.__file__).parent / "distill" / "default.yaml"
FIELDS = {f.name for f in dataclasses.fields(DistillConfig)}


def parse(argv: list[str]) -> DistillConfig:
    return parse_config(DistillConfig, argv, PROG)


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


# --- flags and YAML ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dash", [False, True])
def test_flags_in_underscore_and_dash_form(tmp_path, dash):
    def flag(name: str) -> str:
        return "--" + (name.replace("_", "-") if dash else name)

    config = parse(
        [
            flag("output_dir"), str(tmp_path / "out"),
            flag("student"), "my/student",
            flag("lmbda"), "0.25",
            flag("max_new_tokens"), "7",
            flag("per_device_train_batch_size"), "3",
            flag("seq_kd"),
            flag("use_cpu"),
        ]
    )  # fmt: skip
    assert config.output_dir == str(tmp_path / "out")
    assert config.student == "my/student"
    assert config.lmbda == 0.25
    assert config.max_new_tokens == 7
    assert config.per_device_train_batch_size == 3
    assert config.seq_kd is True
    assert config.use_cpu is True


def test_defaults_without_flags():
    config = parse([])
    assert (config.lmbda, config.beta, config.temperature) == (0.5, 0.5, 0.9)
    assert config.student is None and config.teacher is None and config.data is None
    assert config.remove_unused_columns is False


def test_yaml_config_keys_are_the_flags(tmp_path):
    values = {
        "output_dir": str(tmp_path / "out"),
        "student": "my/student",
        "teacher": "my/teacher",
        "data": "my/data",
        "lmbda": 0.75,
        "beta": 0.1,
        "max_new_tokens": 12,
        "seq_kd": True,
        "use_peft": True,
        "lora_r": 4,
        "learning_rate": "1e-4",  # YAML reads 1e-4 (no dot) as a string; the flag's type converts it
        "lr_scheduler_type": "cosine",
        "max_steps": 5,
    }
    config = parse(["--config", str(write_yaml(tmp_path / "run.yaml", values))])
    for key, value in values.items():
        expected = float(value) if key == "learning_rate" else value
        actual = getattr(config, key)
        assert getattr(actual, "value", actual) == expected, key  # enums (lr_scheduler_type) by value


def test_flags_override_yaml(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"lmbda": 0.75, "max_steps": 5, "student": "yaml/student"})
    config = parse(["--max_steps", "9", f"--config={path}", "--student", "flag/student"])
    assert config.max_steps == 9
    assert config.student == "flag/student"
    assert config.lmbda == 0.75  # not overridden: the YAML value stands


def test_empty_yaml_is_no_settings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("# nothing set\n")
    assert parse(["--config", str(path)]).lmbda == 0.5


def test_unknown_yaml_key_is_rejected_by_name(tmp_path, capsys):
    path = write_yaml(tmp_path / "run.yaml", {"lmbda": 0.5, "lambda": 0.5, "max-steps": 3})
    with pytest.raises(SystemExit) as exit_info:
        parse(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'lambda'" in err and "'max-steps'" in err
    assert str(path) in err and PROG in err


def test_unknown_flag_is_rejected_by_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--lambda", "0.5"])
    assert exit_info.value.code == 2
    assert "unknown flags ['--lambda']" in capsys.readouterr().err


def test_engine_flags_on_eval_distance_say_why_it_has_none(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "distance", "--engine=vllm", "--base-url", "http://127.0.0.1:8000/v1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown flags ['--engine=vllm', '--base-url']" in err
    assert "full logits" in err and "always runs on hf" in err


def test_help_lists_every_knob(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("--lmbda", "--beta", "--temperature", "--max_new_tokens", "--seq_kd", "--config"):
        assert name in out


# --- invalid knob values ----------------------------------------------------------------------------


def refused(argv: list[str], capsys) -> str:
    """The error of a command line the parse step refuses: exit 2, one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    return line


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lmbda", "1.5"),
        ("--lmbda", "-0.1"),
        ("--beta", "-0.1"),
        ("--beta", "1.01"),
        ("--top_p", "2"),
        ("--temperature", "0"),
        ("--temperature", "-1"),
        ("--max_new_tokens", "0"),
    ],
)
def test_invalid_knob_values_are_rejected(flag, value, capsys):
    assert refused([flag, value], capsys).startswith(f"{PROG}: error: {flag} must")


def test_invalid_knob_value_in_yaml_is_rejected(tmp_path, capsys):
    path = write_yaml(tmp_path / "run.yaml", {"lmbda": 1.5})
    assert f"--lmbda must lie in [0, 1], got 1.5 ({path}: lmbda: 1.5)" in refused(
        ["--config", str(path)], capsys
    )


@pytest.mark.parametrize(
    "flag, value", [("--lmbda", "0"), ("--lmbda", "1"), ("--beta", "0"), ("--beta", "1")]
)
def test_knob_bounds_are_allowed(flag, value):
    assert getattr(parse([flag, value]), flag.lstrip("-")) == float(value)


# --- the embedded preset ----------------------------------------------------------------------------


def test_preset_keys_are_all_config_fields():
    values = yaml.safe_load(PRESET.read_text())
    assert isinstance(values, dict) and values
    assert sorted(set(values) - FIELDS) == []


@pytest.mark.parametrize("argv", [[], ["--max_steps", "3"], ["--output_dir", "somewhere", "--use_cpu"]])
def test_no_model_data_or_config_uses_the_preset(argv):
    assert with_preset(argv, PRESET) == ["--config", str(PRESET), *argv]


@pytest.mark.parametrize(
    "argv",
    [
        ["--student", "s"],
        ["--teacher", "t"],
        ["--data", "d"],
        ["--config", "run.yaml"],
        ["--max_steps", "3", "--data=d"],
        ["--student=s"],
    ],
)
def test_naming_a_model_data_or_config_skips_the_preset(argv):
    assert with_preset(argv, PRESET) == argv


def test_embedded_flags():
    assert set(EMBEDDED_FLAGS) == {"--config", "--student", "--teacher", "--data"}


def test_preset_values_reach_the_config_and_flags_override_them():
    values = yaml.safe_load(PRESET.read_text())
    config = parse(with_preset(["--max_steps", "3"], PRESET))
    assert config.max_steps == 3
    for key in ("lmbda", "beta", "temperature", "max_new_tokens", "eval_size", "per_device_train_batch_size"):
        assert getattr(config, key) == values[key], key
    assert config.learning_rate == pytest.approx(float(values["learning_rate"]))


def test_preset_is_not_applied_when_data_is_named():
    config = parse(with_preset(["--data", "d"], PRESET))
    assert config.max_new_tokens == DistillConfig.max_new_tokens  # the dataclass default, not the preset's
    assert config.data == "d"


# --- the command ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, code", [([], 2), (["nonsense"], 2), (["--help"], 0)])
def test_main_without_a_command_prints_usage(argv, code, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    assert "usage: selftaught {distill,backtranslate,eval,report}" in capsys.readouterr().out


def test_bad_data_is_a_clean_error_not_a_traceback(tmp_path, capsys, tiny_student):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?"}\n{not json\n')
    models = ["--student", str(tiny_student), "--teacher", str(tiny_student)]  # models pass their check
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--data", str(bad), *models])
    assert exit_info.value.code == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err


# --- where the student's samples come from --------------------------------------------------------------


def test_a_fixed_weight_server_is_refused_for_on_policy_sampling(capsys):
    assert "cannot sample on-policy" in refused(["--engine", "openai"], capsys)


@pytest.mark.parametrize("flag, value", [("--engine", "tgi"), ("--vllm_mode", "remote")])
def test_unknown_engine_or_vllm_mode_is_rejected(flag, value, capsys):
    assert f"{flag} must be one of" in refused([flag, value], capsys)
