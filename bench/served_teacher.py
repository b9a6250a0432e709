"""A distillation teacher behind vLLM's OpenAI-compatible server: what one step's scoring costs, at K.

The embedded teacher (SmolLM2-135M-Instruct, float32) is served by vLLM's server as the tests start it
(tests/servers.py: `python -m vllm.entrypoints.openai.api_server ... --max-logprobs 128`, eager, on this
machine's CPU, sharing its cores with this process). One step-sized batch: the first --completions
built-in teacher answers (selftaught/data/builtin/teacher_answers.jsonl) as completions of
--completion-tokens tokens after their chat prompts. Measured:
- start: seconds from launching the server to its /health answering;
- per K (8, 32, 128) and --prompts-per-request: the wall seconds of `completion_top_logprobs` on the batch
  (the openai engine: requests, JSON parsing, tensors; median of --repeats after a warm-up), and the
  same batch's responses fetched raw (urllib, no parsing) for their size: bytes per completion token on
  the wire (vLLM sends JSON uncompressed) and, for reference, gzip-compressed;
- the hf engine's `completion_top_logprobs` on the same batch in this process (the teacher in training
  memory), for comparison.

    HF_HUB_OFFLINE=1 flock /tmp/selftaught-heavy.lock .venv/bin/python bench/served_teacher.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

from common import write_result  # bench/common.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "bench" / "results" / "served_teacher.json"
sys.path.insert(0, str(ROOT / "tests"))  # the vLLM server launcher the tests use


def step_batch(tokenizer, completions: int, completion_tokens: int) -> tuple[list, list]:
    """Chat prompts and the first `completion_tokens` tokens of the built-in teacher answers that have
    that many."""
    prompts, answers = [], []
    for line in (ROOT / "selftaught/data/builtin/teacher_answers.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        answer = tokenizer.encode(messages[-1]["content"], add_special_tokens=False)
        if len(answer) < completion_tokens:
            continue
        prompts.append(
            tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=False)
        )
        answers.append(answer[:completion_tokens])
        if len(prompts) == completions:
            return prompts, answers
    raise ValueError(f"fewer than {completions} built-in answers of {completion_tokens} tokens")


def raw_bytes(base_url: str, model: str, pairs: list, k: int, per_request: int) -> tuple[int, int]:
    """Bytes of the JSON responses to the batch's requests, as sent and gzip-compressed."""
    sent = compressed = 0
    for start in range(0, len(pairs), per_request):
        body = {
            "model": model,
            "prompt": [p + c for p, c in pairs[start : start + per_request]],
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": k,
        }
        request = urllib.request.Request(
            f"{base_url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            data = response.read()
        sent, compressed = sent + len(data), compressed + len(gzip.compress(data))
    return sent, compressed


def timed(engine, prompts: list, completions: list, k: int, repeats: int) -> dict:
    """Wall seconds of `completion_top_logprobs` on the batch, after a warm-up call."""
    engine.completion_top_logprobs(prompts, completions, k)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.completion_top_logprobs(prompts, completions, k)
        seconds.append(round(time.perf_counter() - started, 3))
    return {"seconds_median": statistics.median(seconds), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completions", type=int, default=16)
    parser.add_argument("--completion-tokens", type=int, default=96)
    parser.add_argument("--top-k", default="8,32,128")
    parser.add_argument("--prompts-per-request", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = vars(args).copy()

    from servers import vllm_server

    from selftaught.generation.base import EngineSettings
    from selftaught.generation.engines import make_engine
    from selftaught.models.embedded import embedded_teacher

    teacher = embedded_teacher()
    top_ks = [int(k) for k in args.top_k.split(",")]
    per_request = [int(n) for n in args.prompts_per_request.split(",")]
    hf = make_engine(EngineSettings(), str(teacher))
    prompts, completions = step_batch(hf.tokenizer, args.completions, args.completion_tokens)
    tokens = sum(len(c) for c in completions)
    rows = []
    started = time.perf_counter()
    with vllm_server(teacher, "teacher", max_logprobs=max(top_ks)) as server:
        start_seconds = time.perf_counter() - started
        print(f"server up in {start_seconds:.1f} s")
        served = make_engine(EngineSettings(engine="openai", base_url=server.base_url), str(teacher))
        pairs = list(zip(prompts, completions, strict=True))
        for k in top_ks:
            for n in per_request:
                served.prompts_per_request = n
                sent, compressed = raw_bytes(server.base_url, "teacher", pairs, k, n)
                row = {"teacher": "served", "k": k, "prompts_per_request": n}
                row |= timed(served, prompts, completions, k, args.repeats)
                row |= {
                    "bytes_per_token": round(sent / tokens),
                    "gzip_bytes_per_token": round(compressed / tokens),
                }
                print(row)
                rows.append(row)
    for k in top_ks:
        row = {"teacher": "in-process (hf)", "k": k} | timed(hf, prompts, completions, k, args.repeats)
        print(row)
        rows.append(row)
    result = {
        "settings": settings,
        "batch": {
            "completions": len(completions),
            "completion_tokens": tokens,
            "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        },
        "server_start_seconds": round(start_seconds, 1),
        "rows": rows,
    }
    write_result(OUTPUT, result)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
