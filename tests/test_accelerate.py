"""The shipped accelerate configs, and an SFT stage launched on 2 CPU processes with one of them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from conftest import write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from selftaught.cli import main
from selftaught.training.checkpoints import COMPLETE_MARKER

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "accelerate"
EXPECTED = {
    "multi_gpu.yaml": DistributedType.MULTI_GPU,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
    "fsdp.yaml": DistributedType.FSDP,
}


def launch_args(config: Path):
    """What `accelerate launch --config_file CONFIG -m selftaught.cli ...` resolves the file to."""
    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "selftaught.cli"])
    return _validate_launch_command(args)


def test_every_config_is_shipped_and_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_accelerates_own_launcher(name):
    """Each file goes through `accelerate launch`'s validation and builds its plugin from the launch env."""
    args, defaults, _ = launch_args(CONFIGS / name)
    assert defaults.distributed_type == EXPECTED[name]
    assert (args.num_processes, args.num_machines, args.mixed_precision) == (8, 1, "bf16")
    if defaults.distributed_type == DistributedType.DEEPSPEED:
        args.deepspeed_fields_from_accelerate_config = ",".join(
            [*defaults.deepspeed_config, "mixed_precision"]
        )
        _, env = prepare_deepspeed_cmd_env(args)
        with mock.patch.dict(os.environ, env):
            plugin = DeepSpeedPlugin()  # builds the DeepSpeed config dict; DeepSpeed itself is not needed
        assert plugin.zero_stage == int(name[-6])
        # left to the trainer's flags, so that they are set in one place
        assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
        gather = plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
        assert gather == (plugin.zero_stage == 3)  # ZeRO-3 saves one full model, not shards
        return
    env = prepare_multi_gpu_env(args)
    if defaults.distributed_type == DistributedType.FSDP:
        with mock.patch.dict(os.environ, env):
            plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2
        assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
        assert "SHARDED_STATE_DICT" in str(plugin.state_dict_type)


# Each process of a launch runs its launcher below (a script calling the real CLI) as a child, and records
# how that child ended: its exit code (-6 is an abort, e.g. at interpreter exit after the model was saved).
RANK_EXIT = """
import os
import signal
import subprocess
import sys

child = subprocess.Popen([sys.executable, *sys.argv[1:]])
signal.signal(signal.SIGTERM, lambda *_: child.terminate())  # the launcher stopping a process stops it all
code = child.wait()
with open(os.path.join(os.environ["SELFTAUGHT_TEST_OUT"], f"exit{os.environ['RANK']}"), "w") as f:
    f.write(str(code))
sys.exit(code != 0)
"""

# How every launcher ends: it runs the CLI, and records at exit whether the command, however it ended,
# left its process group standing (a group left to interpreter exit can abort a finished run).
RUN_CLI = """
import atexit
import torch.distributed


def record_group():
    with open(os.path.join(os.environ["SELFTAUGHT_TEST_OUT"], f"group{os.environ['RANK']}"), "w") as f:
        f.write("left standing" if torch.distributed.is_initialized() else "destroyed")


atexit.register(record_group)
main(sys.argv[1:])
"""

# Records, per process, every file the Python side opens for writing (then RUN_CLI runs the real CLI).
AUDIT_LAUNCHER = """
import json
import os
import sys

from selftaught.cli import main

LOG = open(os.path.join(os.environ["SELFTAUGHT_TEST_OUT"], f"rank{os.environ['RANK']}.txt"), "w")
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and (
        any(c in (args[1] or "") for c in "wax+") or (args[2] or 0) & WRITE
    ):
        LOG.write(os.path.realpath(os.fsdecode(args[0])) + "\\n")
        LOG.flush()


sys.addaudithook(audit)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    tmp_path: Path, config: str, launcher: str, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`accelerate launch` with the shipped `config` on 2 CPU processes (gloo), each running `launcher`
    followed by RUN_CLI."""
    (tmp_path / "rank_exit.py").write_text(textwrap.dedent(RANK_EXIT))
    (tmp_path / "launcher.py").write_text(textwrap.dedent(launcher) + textwrap.dedent(RUN_CLI))
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CONFIGS / config),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(tmp_path / "rank_exit.py"), str(tmp_path / "launcher.py"), *argv,
    ]  # fmt: skip
    env = {
        **os.environ,
        **(env or {}),
        "SELFTAUGHT_TEST_OUT": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        # without it, transformers on a GPU-less machine runs each process alone (DistributedType.NO)
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def assert_every_process_ended(tmp_path: Path, done: subprocess.CompletedProcess, succeeded: bool) -> None:
    """Success: the launcher and each process exited 0, each having destroyed its process group. Failure:
    a process exited with its error (1), having destroyed its group, and the other did too or was stopped
    by the launcher (SIGTERM); none aborted."""
    log = done.stdout[-3000:] + done.stderr[-6000:]
    exits = {rank: int((tmp_path / f"exit{rank}").read_text()) for rank in (0, 1)}
    if succeeded:
        assert done.returncode == 0 and exits == {0: 0, 1: 0}, f"{exits}\n{log}"
    else:
        assert done.returncode != 0 and 1 in exits.values(), f"{exits}\n{log}"
        assert set(exits.values()) <= {1, -signal.SIGTERM}, f"{exits}\n{log}"
    for rank in (r for r, code in exits.items() if code in (0, 1)):
        assert (tmp_path / f"group{rank}").read_text() == "destroyed", f"process {rank}"


@pytest.fixture
def seeded_run(tmp_path, tiny_student) -> Path:
    """A run folder with the `seed` stage done, on 8 pairs."""
    pairs = [
        {"instruction": f"Name a colour number {i}.", "response": f"Colour {i} is blue."} for i in range(8)
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    run_dir = tmp_path / "run"
    main(["backtranslate", "seed", "--run_dir", str(run_dir), "--seed_data", str(data), "--base_model", "x"])
    return run_dir


@pytest.mark.slow
def test_train_seed_on_two_processes_saves_one_trained_model(tmp_path, seeded_run, tiny_student):
    """`accelerate launch` with the shipped DDP config (2 CPU processes, gloo): M0 is saved whole, once, and
    every process exits 0."""
    argv = [
        "backtranslate", "train-seed", "--run_dir", str(seeded_run), "--base_model", str(tiny_student),
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_length", "128",
        "--learning_rate", "1e-3", "--final_learning_rate", "9e-4",
    ]  # fmt: skip
    done = launch(tmp_path, "multi_gpu.yaml", AUDIT_LAUNCHER, argv)
    assert_every_process_ended(tmp_path, done, succeeded=True)
    assert done.stdout.count("[train-seed] rows in 8") == 1  # one process reports, not both

    out = (seeded_run / "models" / "M0").resolve()
    base, trained = load_file(tiny_student / "model.safetensors"), load_file(out / "model.safetensors")
    assert trained.keys() == base.keys()  # complete: every tensor of the base
    assert all(trained[k].shape == base[k].shape for k in base)
    assert any(not torch.equal(trained[k], base[k]) for k in base), "training did not change the weights"
    AutoModelForCausalLM.from_pretrained(out)
    for name in ("README.md", "sft_complete.json", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name

    written = {rank: (tmp_path / f"rank{rank}.txt").read_text().split() for rank in (0, 1)}
    inside = lambda paths: {p for p in paths if p.startswith(str(out)) or "summary" in p}  # noqa: E731
    assert not inside(written[1]), "the second process wrote into the model folder or the summary"
    assert {str(out / "config.json"), str(out / "README.md"), str(out / "sft_complete.json")} <= inside(
        written[0]
    )


# --- FSDP on 2 CPU processes ----------------------------------------------------------------------------

# accelerate (1.15) turns FSDP on only for accelerator devices: on CPU processes AcceleratorState keeps
# MULTI_CPU and the run silently trains plain DDP. This launcher lifts that one check, so that everything
# else runs as on GPUs: accelerate's fully_shard wrapping (FSDP 2, one unit per decoder layer), the Trainer's
# sharded checkpoints and their resume, and our full-state-dict save, all over gloo. It also records the
# full state dict gathered at the end, and can stop a run right after its first checkpoint (a crash).
FSDP_LAUNCHER = """
import json
import os
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import selftaught.distill.recipe
import selftaught.training.sft
from selftaught.cli import main
from selftaught.training.checkpoints import CompleteCheckpoints

OUT = Path(os.environ["SELFTAUGHT_TEST_OUT"])
accelerator_state_init = AcceleratorState.__init__


def init(self, *args, fsdp_plugin=None, **kwargs):
    accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = init

if os.environ.get("SELFTAUGHT_TEST_CRASH_AFTER_CHECKPOINT"):
    save_checkpoint = CompleteCheckpoints._save_checkpoint

    def save_then_crash(self, *args, **kwargs):
        save_checkpoint(self, *args, **kwargs)
        raise SystemExit("crash after the first checkpoint")

    CompleteCheckpoints._save_checkpoint = save_then_crash

save_final_model = selftaught.training.sft.save_final_model


def save_and_gather(trainer, out, merge_lora):
    assert trainer.is_fsdp_enabled and type(trainer.model).__name__.startswith("FSDP")
    save_final_model(trainer, out, merge_lora)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(trainer.model, options=options)  # collective: every process gathers
    if trainer.accelerator.is_main_process:
        save_file({k: v.contiguous().clone() for k, v in full.items()}, OUT / "gathered.safetensors")


selftaught.training.sft.save_final_model = selftaught.distill.recipe.save_final_model = save_and_gather
"""


def launch_fsdp(tmp_path: Path, argv: list[str], crash: bool = False) -> subprocess.CompletedProcess:
    env = {"SELFTAUGHT_TEST_CRASH_AFTER_CHECKPOINT": "1"} if crash else {}
    return launch(tmp_path, "fsdp.yaml", FSDP_LAUNCHER, argv, env)


def assert_saved_model_is_the_gathered_one(folder: Path, gathered_file: Path, base: Path) -> None:
    saved, gathered = load_file(folder / "model.safetensors"), load_file(gathered_file)
    assert saved.keys() <= gathered.keys() and "model.embed_tokens.weight" in saved
    assert set(gathered) - set(saved) <= {"lm_head.weight"}  # tied to the embeddings: saved once
    for name, tensor in saved.items():
        assert torch.equal(tensor, gathered[name]), name
    initial = load_file(base / "model.safetensors")
    assert any(not torch.equal(saved[k], initial[k]) for k in initial), "training did not change the weights"
    AutoModelForCausalLM.from_pretrained(folder)  # one ordinary Hugging Face folder


@pytest.mark.slow
def test_fsdp_sft_resumes_its_sharded_checkpoint_and_saves_one_full_model(tmp_path, seeded_run, tiny_student):
    """backtranslate train-seed under the shipped fsdp.yaml on 2 CPU processes: a run that dies after its
    first (sharded) checkpoint resumes from it; M0 is one plain folder equal to the gathered state dict."""
    argv = [
        "backtranslate", "train-seed", "--run_dir", str(seeded_run), "--base_model", str(tiny_student),
        "--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "2", "--max_length", "128",
        "--learning_rate", "1e-3", "--final_learning_rate", "9e-4",
    ]  # fmt: skip
    crashed = launch_fsdp(tmp_path, argv, crash=True)
    assert "crash after the first checkpoint" in crashed.stderr
    assert_every_process_ended(tmp_path, crashed, succeeded=False)
    out = (seeded_run / "models" / "M0").resolve()
    shards = sorted(p.name for p in (out / "checkpoint-1" / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one shard per process, no full model
    assert (out / "checkpoint-1" / COMPLETE_MARKER).is_file()  # written once both processes had saved
    assert not (out / "model.safetensors").exists()

    done = launch_fsdp(tmp_path, argv)
    assert_every_process_ended(tmp_path, done, succeeded=True)
    record = json.loads((out / "sft_complete.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-1")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 2 in steps
    assert_saved_model_is_the_gathered_one(out, tmp_path / "gathered.safetensors", tiny_student)


@pytest.mark.slow
def test_fsdp_distillation_saves_one_full_model(tmp_path, tiny_student, tiny_teacher, math_data):
    """distill under fsdp.yaml on 2 CPU processes: student and teacher sharded, on-policy samples drawn from
    the sharded student, and the output one plain folder equal to the gathered state dict."""
    out = tmp_path / "out"
    argv = [
        "distill", "--student", str(tiny_student), "--teacher", str(tiny_teacher), "--data", str(math_data),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--max_new_tokens", "8", "--eval_size", "0", "--lmbda", "1", "--save_strategy", "no",
        "--learning_rate", "1e-3", "--report_to", "none",
    ]  # fmt: skip
    done = launch_fsdp(tmp_path, argv)
    assert_every_process_ended(tmp_path, done, succeeded=True)
    assert_saved_model_is_the_gathered_one(out, tmp_path / "gathered.safetensors", tiny_student)


# A command run in one process where a library made a one-process group of its own (vLLM's colocated
# engine does): the teardown must hand control back to the caller of `main`, not end its process.
ONE_PROCESS_GROUP = """
import os, tempfile
import torch.distributed as dist
from selftaught.training.distributed import process_group_teardown

with process_group_teardown():
    store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
print("the caller goes on")
"""


def test_a_group_made_inside_a_single_process_command_leaves_the_caller_running():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS_GROUP], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "the caller goes on" in done.stdout  # a test runner calling main() keeps running and reporting
