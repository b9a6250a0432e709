"""Sparse-teacher losses against the dense loss on real distributions: how wrong is top-K, at which K.

The teacher is the embedded SmolLM2-135M-Instruct; the students are its 24-layer cut before healing (far
from the teacher, as at the start of a run), the healed default student when it is cached (as after
healing), and the teacher with every weight perturbed by relative Gaussian noise (close to it, as late
in a run). On the first shipped math test prompts, two completion sources: the data's reference solutions
(supervised KD) and the student's own samples at temperature 1 (on-policy). For each beta and K it reports,
against `generalized_jsd` on the same tokens:
- the relative error of the mean per-token loss (sparse - dense) / dense (the sparse loss is a lower bound);
- the cosine between the sparse and the dense gradients, in the student's logits and in its parameters;
- for `sampled_kl` (k1 and k3, on-policy only; its error is sampling noise, not a bias), the same against
  the dense reverse KL on one batch;
- the teacher's support: its mean top-K mass, how often the tail clamp (1 - eps) is active, how often the
  actual token lies outside the top-K.

    HF_HUB_OFFLINE=1 flock /tmp/selftaught-heavy.lock .venv/bin/python bench/sparse_loss_bias.py
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from common import write_result  # bench/common.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "bench" / "results" / "sparse_loss_bias.json"


def load_students(noise: float, seed: int) -> dict:
    """name -> model: the raw cut, the healed student when cached, and the perturbed teacher."""
    import torch

    from selftaught.distill.student import HEALING, healed_folder, is_current
    from selftaught.models import load_model
    from selftaught.models.embedded import embedded_student, embedded_teacher

    students = {"cut": load_model(str(embedded_student(list(HEALING.layers))), dtype="float32")}
    if is_current(healed_folder(HEALING), HEALING):
        students["healed"] = load_model(str(healed_folder(HEALING)), dtype="float32")
    else:
        print(f"the healed student is not cached ({healed_folder(HEALING).name}): measuring without it")
    perturbed = load_model(str(embedded_teacher()), dtype="float32")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            parameter.mul_(1 + noise * torch.randn(parameter.shape, generator=generator))
    students[f"perturbed {noise}"] = perturbed
    return students


def prompts_and_references(tokenizer, count: int) -> list[tuple[list[int], list[int]]]:
    from selftaught.data.formats import to_examples, tokenize_completion, tokenize_prompt
    from selftaught.data.loading import load_rows
    from selftaught.distill.student import MATH_PROMPTS

    examples = to_examples(load_rows(str(MATH_PROMPTS), "test"), "math_prompts")[:count]
    pairs = []
    for example in examples:
        prompt_ids = tokenize_prompt(tokenizer, example.prompt)
        pairs.append(
            (prompt_ids, tokenize_completion(tokenizer, example.prompt, example.completion, prompt_ids))
        )
    return pairs


def sample_completions(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, seed: int
) -> list[list[int]]:
    """The student's own completions at temperature 1 (no top-k / top-p), up to and including EOS."""
    import torch

    torch.manual_seed(seed)
    completions = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.eos_token_id,
            )
        ids = out[0, len(prompt) :].tolist()
        eos = tokenizer.eos_token_id
        completions.append(ids[: ids.index(eos) + 1] if eos in ids else ids)
    return completions


def completion_logits(model, pairs: list[tuple[list[int], list[int]]]):
    """[tokens, vocabulary] logits predicting every completion token, and the tokens."""
    import torch

    logits, tokens = [], []
    for prompt, completion in pairs:
        ids = torch.tensor([prompt + completion])
        logits.append(model(input_ids=ids, logits_to_keep=len(completion) + 1).logits[0, :-1])
        tokens.append(torch.tensor(completion))
    return torch.cat(logits), torch.cat(tokens)


def cosine(a: list, b: list) -> float:
    dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))
    norms = math.sqrt(
        sum(float(x.double().square().sum()) for x in a) * sum(float(y.double().square().sum()) for y in b)
    )
    return dot / norms


def support_statistics(teacher) -> dict:
    import torch

    log_mass = torch.logsumexp(teacher.top_log_probs, -1)
    outside = (teacher.top_ids != teacher.token_ids[:, None]).all(-1)
    clamped = log_mass >= math.log1p(-torch.finfo(teacher.top_log_probs.dtype).eps)
    return {
        "teacher_top_k_mass_mean": float(log_mass.exp().mean()),
        "teacher_tail_mean": float((-torch.expm1(log_mass)).clamp(min=0).mean()),
        "tail_clamp_active_share": float(clamped.float().mean()),
        "actual_token_outside_top_k_share": float(outside.float().mean()),
    }


def measure(student, teacher_model, pairs, ks: list[int], betas: list[float], on_policy: bool) -> dict:
    import torch

    from selftaught.training.losses import generalized_jsd
    from selftaught.training.sparse_losses import SparseTeacher, sampled_kl, sparse_generalized_jsd

    with torch.no_grad():
        teacher_logits, tokens = completion_logits(teacher_model, pairs)
    student_logits, _ = completion_logits(student, pairs)
    params = [p for p in student.parameters() if p.requires_grad]

    def gradients(per_token: torch.Tensor) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
        logit_grad, *param_grads = torch.autograd.grad(
            per_token.mean(), [student_logits, *params], retain_graph=True
        )
        return float(per_token.mean().detach()), logit_grad, param_grads

    sparse_teachers = {k: SparseTeacher.from_logits(teacher_logits, tokens, k) for k in ks}
    result = {
        "tokens": len(tokens),
        "support": {k: support_statistics(t) for k, t in sparse_teachers.items()},
        "dense": {},
        "sparse": [],
    }
    for beta in betas:
        dense_loss, dense_logit_grad, dense_param_grads = gradients(
            generalized_jsd(student_logits, teacher_logits, beta)
        )
        result["dense"][beta] = dense_loss
        for k, sparse_teacher in sparse_teachers.items():
            loss, logit_grad, param_grads = gradients(
                sparse_generalized_jsd(student_logits, sparse_teacher, beta)
            )
            result["sparse"].append(
                {
                    "beta": beta,
                    "k": k,
                    "loss": loss,
                    "relative_error": (loss - dense_loss) / dense_loss,
                    "logit_grad_cosine": cosine([logit_grad], [dense_logit_grad]),
                    "param_grad_cosine": cosine(param_grads, dense_param_grads),
                }
            )
        if beta == 1.0 and on_policy:
            result["sampled_kl"] = {}
            for estimator in ("k1", "k3"):
                loss, logit_grad, param_grads = gradients(
                    sampled_kl(student_logits, sparse_teachers[ks[0]], estimator)
                )
                result["sampled_kl"][estimator] = {
                    "loss": loss,
                    "relative_error": (loss - dense_loss) / dense_loss,
                    "logit_grad_cosine": cosine([logit_grad], [dense_logit_grad]),
                    "param_grad_cosine": cosine(param_grads, dense_param_grads),
                }
    return result


def print_run(name: str, source: str, run: dict) -> None:
    print(f"\n{name}, {source} completions ({run['tokens']} tokens)")
    for k, s in run["support"].items():
        print(
            f"  K={k:<4} teacher top-K mass {s['teacher_top_k_mass_mean']:.4f}, tail clamp active "
            f"{s['tail_clamp_active_share']:.1%}, actual token outside top-K "
            f"{s['actual_token_outside_top_k_share']:.1%}"
        )
    print(
        f"  {'beta':>5} {'K':>5} {'dense':>9} {'sparse':>9} {'rel.err':>9} "
        f"{'cos logits':>11} {'cos params':>11}"
    )
    for r in run["sparse"]:
        print(
            f"  {r['beta']:>5} {r['k']:>5} {run['dense'][r['beta']]:>9.4f} {r['loss']:>9.4f} "
            f"{r['relative_error']:>+9.2%} {r['logit_grad_cosine']:>11.4f} {r['param_grad_cosine']:>11.4f}"
        )
    for estimator, r in run.get("sampled_kl", {}).items():
        print(
            f"  sampled_kl {estimator}: {r['loss']:.4f} against reverse KL {run['dense'][1.0]:.4f} "
            f"({r['relative_error']:+.1%}), cos logits {r['logit_grad_cosine']:.4f}, "
            f"params {r['param_grad_cosine']:.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="the first N math test prompts")
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.5, 0.9, 1.0])
    parser.add_argument("--max-new-tokens", type=int, default=96, help="cap of the student's own samples")
    parser.add_argument(
        "--noise", type=float, default=0.05, help="relative weight noise of the perturbed teacher"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    import torch

    from selftaught.models import load_model, load_tokenizer
    from selftaught.models.embedded import embedded_teacher

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    teacher_dir = embedded_teacher()
    tokenizer = load_tokenizer(str(teacher_dir))
    teacher = load_model(str(teacher_dir), dtype="float32")
    references = prompts_and_references(tokenizer, args.prompts)
    runs = []
    for name, student in load_students(args.noise, args.seed).items():
        samples = sample_completions(
            student, tokenizer, [p for p, _ in references], args.max_new_tokens, args.seed
        )
        for source, pairs in (
            ("data", references),
            ("student", [(p, c) for (p, _), c in zip(references, samples, strict=True)]),
        ):
            start = time.perf_counter()
            run = measure(student, teacher, pairs, args.ks, args.betas, on_policy=source == "student")
            run |= {"student": name, "source": source, "seconds": round(time.perf_counter() - start, 1)}
            print_run(name, source, run)
            runs.append(run)
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    write_result(args.output, {"settings": settings, "runs": runs})
    print(
        f"\nwrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output.name}"
    )


if __name__ == "__main__":
    main()
