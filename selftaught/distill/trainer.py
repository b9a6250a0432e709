"""GKD as a transformers `Trainer`: on-policy sampling, a frozen teacher, a token-level generalized JSD.

Built on `Trainer` (not TRL's GKDTrainer) for three reasons the peers' bug reports made clear:
- Completions are made for a whole optimizer step at once, in `get_batch_samples`, *before* any
  loss is computed. Only then is the number of completion tokens in the step known, so the loss
  can be normalised over the whole step across gradient accumulation and processes (TRL counts
  the dataset's labels, which on-policy steps do not train on).
- Each step runs one student forward, one teacher forward and one sampling pass, nothing more,
  and asks both models for the completion positions' logits only.
- Whether a step is on-policy is a pure function of (seed, step): every process agrees without
  communicating and a resumed run makes the same choices. So are the samples: each draw is seeded from
  (seed, step, process) in a forked RNG, leaving the global one (dropout) untouched. transformers restores
  the global RNG of a run resumed mid-epoch only *after* fetching (here: sampling) its first step, so
  samples drawn from it made a resumed run differ from an uninterrupted one at every tensor.
The teacher is a source the trainer asks (`distill.teachers`): a model in this process (full logits, the
exact generalized JSD) or a server (its top-K log-probabilities: the JSD on top-K + a tail bin,
`training.sparse_losses`); `--loss sampled_kl` uses the teacher's log-probability of each sampled token alone.
When the data gives the teacher prompts of its own (privileged context, `distill.context`), the teacher
reads [its prompt | the same completion tokens] and scores exactly the student's completion positions.
A teacher with another tokenizer (`distill.cross_teacher`) reads the completions' text re-tokenised after
its own prompt and gives per-token targets back; the share of completion tokens on each loss path is logged.
Everything distributed (DDP, DeepSpeed, FSDP) comes from accelerate through `Trainer`; the teacher
is wrapped with TRL's helpers for DeepSpeed and FSDP. Samples come from a policy engine
(`selftaught.generation.policy`): the live student (`hf`) or vLLM through TRL's backend (`vllm`), which
gets the student's weights once per optimizer step. With `--max_staleness K` > 0 a copy of the student
samples the next K steps in a thread beside training (`distill.async_sampling`); at K = 0 nothing of that
exists and every step samples first, then trains.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from trl.models.utils import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation

from selftaught.distill.async_sampling import AsyncStudentSampler, SampledStep
from selftaught.distill.config import DistillConfig
from selftaught.distill.cross_teacher import PATHS, CrossTokenizerTeacher, ScoredBatch
from selftaught.distill.teachers import CompletionBatch, InProcessTeacher, Teacher, TeacherScores
from selftaught.generation.base import SamplingParams, left_pad, right_pad
from selftaught.generation.policy import HFPolicyEngine, PolicyEngine
from selftaught.models.vocab import shared_vocab_size
from selftaught.scoring.logits import completion_logits, join_prompt_completion
from selftaught.training.checkpoints import CompleteCheckpoints
from selftaught.training.losses import generalized_jsd
from selftaught.training.sparse_losses import SparseTeacher, sampled_kl, sparse_generalized_jsd

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
RUN_TOTALS = (
    "run_totals.json"  # in each checkpoint: the counts the run's summary reports (see _save_checkpoint)
)


@dataclass
class PromptCompletionCollator:
    """Left-padded prompts and right-padded reference completions (possibly all empty), and the teacher's
    own left-padded prompts when the data has them (privileged context)."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        prompt_ids, prompt_mask = left_pad([f["prompt_ids"] for f in features], self.pad_token_id)
        completion_ids, completion_mask = right_pad(
            [f["completion_ids"] for f in features], self.pad_token_id
        )
        batch = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
        }
        if "teacher_prompt_ids" in features[0]:
            ids, mask = left_pad([f["teacher_prompt_ids"] for f in features], self.pad_token_id)
            batch |= {"teacher_prompt_ids": ids, "teacher_prompt_mask": mask}
        return batch


def next_batches(epoch_iterator, count: int) -> list[dict]:
    """Up to `count` micro-batches from the epoch (fewer at its end)."""
    raw = []
    for _ in range(count):
        try:
            raw.append(next(epoch_iterator))
        except StopIteration:
            break
    return raw


def prompts_of(batches: list[dict[str, torch.Tensor]], prefix: str) -> list[list[int]]:
    """The unpadded `{prefix}_ids` of every row of the micro-batches, in order."""
    return [
        ids[mask.bool()].tolist()
        for b in batches
        for ids, mask in zip(b[f"{prefix}_ids"], b[f"{prefix}_mask"], strict=True)
    ]


def forked_rng(device: torch.device):
    """A context whose seeding and draws leave the global RNG of the CPU (and of `device`) as it was."""
    devices = [] if device.type == "cpu" else [device.index or 0]
    return torch.random.fork_rng(devices=devices, device_type=device.type)


@dataclass
class TeacherSampler:
    """A teacher that is not a model in this process, as a `PolicyEngine`: its weights never change."""

    teacher: Teacher

    @property
    def name(self) -> str:
        return self.teacher.name

    def sync_weights(self) -> None:
        """Nothing to push: a fixed teacher."""

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, desc: str | None = None
    ) -> list[list[int]]:
        return self.teacher.generate(prompts, params, desc)


class GKDistillTrainer(CompleteCheckpoints, Trainer):
    def __init__(
        self,
        model: PreTrainedModel,
        teacher: PreTrainedModel | Teacher,
        args: DistillConfig,
        processing_class: PreTrainedTokenizerBase,
        train_dataset=None,
        eval_dataset=None,
        callbacks=None,
    ) -> None:
        super().__init__(
            model=model,
            args=args,
            data_collator=PromptCompletionCollator(processing_class.pad_token_id),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        if isinstance(teacher, PreTrainedModel):  # a model in this process
            vocab_size = shared_vocab_size(processing_class, model, teacher)
            teacher = InProcessTeacher(teacher, processing_class, vocab_size, args.per_device_eval_batch_size)
        in_process = isinstance(teacher, InProcessTeacher)
        self.vocab_size = shared_vocab_size(processing_class, model, *([teacher.model] if in_process else []))
        if in_process or isinstance(teacher, CrossTokenizerTeacher):  # a model of its own to place
            teacher = replace(teacher, model=self._prepare_teacher(teacher.model))
        self.teacher = teacher
        self.path_tokens: dict[str, int] = dict.fromkeys(PATHS, 0)  # across tokenizers: the run's, per path
        # across tokenizers: the run's completions trained on, and those not their tokenizer's own tokens
        self.completion_counts: dict[str, int] = {"completions": 0, "non_canonical": 0}
        self.sampling = SamplingParams(args.max_new_tokens, args.temperature, args.top_p)
        # every sampler draws an optimizer step's completions in one batch: decoding a small model reads
        # all its weights per token whatever the batch (on 2 CPU cores 16 prompts take 1.5x the time of 4);
        # generation_batch_size caps the hf engine's batch where memory, not bandwidth, is the limit
        self.prompts_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        hf_batch = args.generation_batch_size or self.prompts_per_step
        self.samplers = {
            "student": self._student_sampler(hf_batch),
            "teacher": HFPolicyEngine(
                lambda: self.unwrapped_for_generation(self.teacher.model),
                processing_class,
                hf_batch,
                "hf (teacher)",
            )
            if in_process
            else TeacherSampler(self.teacher),
        }
        self._synced_step: int | None = None  # the optimizer step whose weights the student sampler has
        # one user of the global RNG at a time: the sampler thread (max_staleness > 0) seeds and draws it too
        self.rng_lock = threading.Lock()
        self.async_sampler: AsyncStudentSampler | None = None  # max_staleness > 0, while training
        self._read_ahead: dict[int, list[dict]] = {}  # step -> its micro-batches, read from the epoch ahead
        self._reading = None  # the epoch iterator they come from
        self._next_read = 0  # the first step not read yet
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the step's token count itself
        self._since_log: dict[str, float] = defaultdict(float)
        self._last_log_time: float | None = None

    def _prepare_teacher(self, teacher: PreTrainedModel) -> torch.nn.Module:
        """Frozen, in eval mode, placed and sharded like the student."""
        teacher.requires_grad_(False)
        teacher.eval()
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _student_sampler(self, hf_batch: int) -> PolicyEngine:
        """The engine `args.engine` names, sampling the student being trained."""
        args = self.args
        if args.engine == "hf":
            return HFPolicyEngine(
                lambda: self.unwrapped_for_generation(self.model_wrapped),
                self.processing_class,
                hf_batch,
                "hf (live student)",
            )
        from selftaught.generation.vllm_engine import VLLMPolicyEngine

        return VLLMPolicyEngine(
            self.model,
            self.accelerator,
            self.processing_class,
            self.sampling,
            mode=args.vllm_mode,
            server_url=args.vllm_server_url,
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size,
            max_model_length=args.max_prompt_length + args.max_new_tokens,
            max_num_seqs=self.prompts_per_step * args.tensor_parallel_size,
            enable_sleep_mode=args.vllm_enable_sleep_mode,
            trust_remote_code=args.trust_remote_code,
            dtype=args.student_dtype,  # on CPU vLLM samples the weights in the dtype they train in
            kv_cache_gib=args.vllm_kv_cache_gib,
            seed=args.seed,
        )

    # --- what each optimizer step trains on -----------------------------------------------------

    def is_on_policy(self, step: int) -> bool:
        """Bernoulli(lmbda) drawn from (seed, step): the same on every process and on resume."""
        return random.Random(self.args.seed * 1_000_003 + step).random() < self.args.lmbda

    def complete(
        self,
        batches: list[dict[str, torch.Tensor]],
        source: str,
        evaluating: bool = False,
        sampled: list[list[int]] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Attach completions from `source` ("student", "teacher" or "data") and build model inputs.

        Sampled completions come from one engine call for all the micro-batches of the step; the teacher
        samples from its own prompts. When the teacher has its own prompts, it gets its own inputs
        (`teacher_*`): its prompt block, then the very same completion block as the student's.
        `evaluating`: held-out batches, sampled from a seed of their own (not the next step's).
        `sampled`: the step's completions, already drawn beside training (max_staleness > 0).
        """
        device = self.args.device
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        own_prompts = "teacher_prompt_ids" in batches[0]
        if source == "data":
            completions = [(b["completion_ids"], b["completion_mask"]) for b in batches]
        else:
            prefix = "teacher_prompt" if source == "teacher" and own_prompts else "prompt"
            drawn = iter(
                self.sample(source, prompts_of(batches, prefix), evaluating) if sampled is None else sampled
            )
            pad_id = self.processing_class.pad_token_id
            padded = [right_pad([next(drawn) for _ in b["prompt_ids"]], pad_id) for b in batches]
            completions = [(ids.to(device), mask.to(device)) for ids, mask in padded]
        inputs = []
        for batch, (completion_ids, completion_mask) in zip(batches, completions, strict=True):
            joined = join_prompt_completion(
                batch["prompt_ids"], batch["prompt_mask"], completion_ids, completion_mask
            )
            if own_prompts:
                teacher_joined = join_prompt_completion(
                    batch["teacher_prompt_ids"], batch["teacher_prompt_mask"], completion_ids, completion_mask
                )
                joined |= {f"teacher_{k}": v for k, v in teacher_joined.items()}
            inputs.append(joined | {"completion_mask": completion_mask})
        return inputs

    def sample(self, source: str, prompts: list[list[int]], evaluating: bool = False) -> list[list[int]]:
        """Completions from the student or the teacher; the student's engine first gets the current weights,
        once per optimizer step (every process takes part: a ZeRO-3 / FSDP gather is collective)."""
        sampler = self.samplers[source]
        started = time.perf_counter()
        if source == "student" and self._synced_step != self.state.global_step:
            sampler.sync_weights()
            self._synced_step = self.state.global_step
        seed = self.sampling_seed(evaluating)
        # a teacher outside this process takes the seed with the request (hf reseeds with it: the same draw)
        params = self.sampling if source == "student" else replace(self.sampling, seed=seed)
        with self.rng_lock, forked_rng(self.args.device):
            torch.manual_seed(seed)
            completions = sampler.generate(prompts, params)
        self._since_log["generation_seconds"] += time.perf_counter() - started
        return completions

    def sampling_seed(self, evaluating: bool, step: int | None = None) -> int:
        """The seed of one sampling call, from (seed, step, process, training or held-out) alone: a resumed
        run draws what an uninterrupted one drew, with no RNG state to save. The processes of one colocated
        vLLM (tensor parallel) sample as one, so they share a seed, as TRL seeds them. `step`: the step
        sampled for, when it is not the current one (sampled ahead, max_staleness > 0)."""
        sharing = self.args.tensor_parallel_size if self.args.engine == "vllm" else 1
        process = self.args.process_index // sharing
        step = self.state.global_step if step is None else step
        entropy = (self.args.seed, step, process, int(evaluating))
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])

    def unwrapped_for_generation(self, model):
        """The bare model to call generate() on.

        Only ZeRO-3 needs TRL's helper (it gathers the sharded weights); elsewhere we avoid it, since it
        toggles gradient checkpointing off and back on with default settings, losing the user's.
        Eval mode inside `generate_completions` already keeps the KV cache under checkpointing.
        """
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            return unwrap_model_for_generation(
                model, self.accelerator, gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
            )
        return nullcontext(self.accelerator.unwrap_model(model))

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """All micro-batches of one optimizer step, completed, and their total completion-token count."""
        if self._last_log_time is None:
            self._last_log_time = time.perf_counter()
        ahead = None
        if self.args.max_staleness:
            raw, ahead = self.step_sampled_ahead(epoch_iterator)
        else:
            raw = next_batches(epoch_iterator, num_batches)
        if not raw:
            return [], None
        on_policy = self.is_on_policy(self.state.global_step)
        source = "student" if on_policy else ("teacher" if self.args.seq_kd else "data")
        batches = self.complete(raw, source, sampled=ahead.completions if ahead else None)
        if ahead:
            staleness = self.state.global_step - ahead.version
            self._since_log["staleness"] = max(self._since_log["staleness"], staleness)
        tokens = sum(b["completion_mask"].sum() for b in batches).to(device)
        if self.args.world_size > 1:
            tokens = self.accelerator.gather(tokens).sum()
        if tokens.item() == 0:
            raise ValueError(
                "an optimizer step has no completion tokens to train on: the data has prompts only. "
                "Use lmbda=1 (always sample from the student) or seq_kd=True, or add completions."
            )
        self._since_log["steps"] += 1
        self._since_log["on_policy_steps"] += on_policy
        self._since_log["completion_tokens"] += tokens.item()
        return batches, tokens

    # --- sampling beside training (max_staleness > 0) ------------------------------------------------

    def step_sampled_ahead(self, epoch_iterator) -> tuple[list[dict], SampledStep | None]:
        """This step's micro-batches and, for an on-policy step, its completions drawn beside training.

        First hands the sampler the steps up to global_step + K with a snapshot of the current weights,
        reading their micro-batches from the epoch now (gradient_accumulation_steps each, as the trainer
        would: every batch of the epoch is read once, in order). It never reads past the epoch's end or
        max_steps, so the first step of each epoch (and of a resumed run) is sampled from current weights."""
        step, args = self.state.global_step, self.args
        if self.async_sampler is None:
            self.async_sampler = AsyncStudentSampler(
                self.accelerator.unwrap_model(self.model),
                self.processing_class,
                args.generation_batch_size or self.prompts_per_step,
                self.sampling,
                self.rng_lock,
                functools.partial(forked_rng, args.device),
            )
        if epoch_iterator is not self._reading:  # a new epoch: nothing of it read yet
            self.async_sampler.cancel_pending()
            self._reading, self._read_ahead, self._next_read = epoch_iterator, {}, step
        weights = None
        while self._next_read <= min(step + args.max_staleness, self.state.max_steps - 1):
            batches = next_batches(epoch_iterator, args.gradient_accumulation_steps)
            if not batches:
                break
            ahead, self._next_read = self._next_read, self._next_read + 1
            self._read_ahead[ahead] = batches
            if self.is_on_policy(ahead):
                if weights is None:  # one snapshot per optimizer step, shared by the steps handed over now
                    model = self.accelerator.unwrap_model(self.model)
                    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                prompts = prompts_of(batches, "prompt")
                self.async_sampler.submit(ahead, prompts, self.sampling_seed(False, ahead), weights, step)
        raw = self._read_ahead.pop(step, [])
        if not raw or not self.is_on_policy(step):
            return raw, None
        started = time.perf_counter()
        sampled = self.async_sampler.result(step)
        self._since_log["generation_seconds"] += time.perf_counter() - started  # the wait, at K > 0
        return raw, sampled

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`; however it ends (done, an error on either side, Ctrl-C), the sampler thread of
        max_staleness > 0 ends with it. A resumed run starts from its checkpoint's run totals."""
        totals_file = (
            Path(resume_from_checkpoint) / RUN_TOTALS if isinstance(resume_from_checkpoint, str) else None
        )
        if totals_file and totals_file.is_file():
            totals = json.loads(totals_file.read_text())
            self.path_tokens, self.completion_counts = totals["path_tokens"], totals["completion_counts"]
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            if self.async_sampler is not None:
                self.async_sampler.close()
                self.async_sampler, self._reading = None, None

    def _save_checkpoint(self, model, trial) -> None:
        """The checkpoint, with the run totals the summary reports (loss paths, completions), so that a
        resumed run's eval_results.json and card count the whole run, not the part since the resume."""
        if self.args.should_save:
            folder = self.checkpoint_folder(trial)
            folder.mkdir(parents=True, exist_ok=True)
            totals = {"path_tokens": self.path_tokens, "completion_counts": self.completion_counts}
            (folder / RUN_TOTALS).write_text(json.dumps(totals) + "\n")
        super()._save_checkpoint(model, trial)

    def _load_rng_state(self, checkpoint) -> None:
        """A resumed run's global RNG, restored while no sampler thread draws from it."""
        with self.rng_lock:
            super()._load_rng_state(checkpoint)

    # --- the loss -------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Sum of the per-token loss over completion tokens / completion tokens in the whole step."""
        mask = inputs["completion_mask"].bool()
        model_inputs = {k: inputs[k] for k in MODEL_INPUTS}
        # the teacher's own prompt (privileged context), if it has one, before the same completion tokens
        teacher_batch = CompletionBatch(
            {k: inputs.get(f"teacher_{k}", inputs[k]) for k in MODEL_INPUTS}, mask
        )
        with torch.no_grad():
            teacher_scores = self.teacher.scores(teacher_batch)
        if isinstance(teacher_scores, ScoredBatch) and model.training:
            for name, count in teacher_scores.counts().items():
                self._since_log[f"{name}_tokens"] += count
                self.path_tokens[name] += count
            self._since_log["completions"] += teacher_scores.completions
            self._since_log["non_canonical"] += teacher_scores.non_canonical
            self.completion_counts["completions"] += teacher_scores.completions
            self.completion_counts["non_canonical"] += teacher_scores.non_canonical
        student_logits = completion_logits(model, model_inputs, mask, self.vocab_size)
        per_token = self.per_token_loss(student_logits, teacher_scores, teacher_batch)
        if num_items_in_batch is None:  # evaluation: this batch alone
            loss = per_token.sum() / mask.sum().clamp(min=1)
        else:
            # DDP averages gradients over processes; the count is global, so undo that average.
            loss = per_token.sum() / num_items_in_batch * self.accelerator.num_processes
        return (loss, {"per_token": per_token.detach()}) if return_outputs else loss

    def per_token_loss(
        self, student_logits: torch.Tensor, teacher: TeacherScores, batch: CompletionBatch
    ) -> torch.Tensor:
        """--loss at each completion position: the generalized JSD, exact on the teacher's logits or on its
        top-K + a tail bin; or sampled_kl, from the teacher's log-probability of each actual token. Across
        tokenizers, by each token's path (`CrossTokenizerTeacher.per_token_loss`)."""
        if isinstance(teacher, ScoredBatch):
            estimator = self.args.kl_estimator_used if self.args.loss == "sampled_kl" else "k3"
            return self.teacher.per_token_loss(student_logits, teacher, self.args.beta, estimator)
        if self.args.loss == "sampled_kl":
            if isinstance(teacher, torch.Tensor):  # of the full distribution, only the actual tokens' count
                teacher = SparseTeacher.from_logits(teacher, batch.token_ids(), k=1)
            return sampled_kl(student_logits, teacher, self.args.kl_estimator_used)
        if isinstance(teacher, SparseTeacher):
            return sparse_generalized_jsd(student_logits, teacher, self.args.beta)
        return generalized_jsd(student_logits, teacher, self.args.beta)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Held-out loss on the dataset's completions, or on the student's samples for prompt-only data and
        for sampled_kl (which holds only on the student's own samples)."""
        on_data = inputs["completion_mask"].sum() > 0 and self.args.loss != "sampled_kl"
        source = "data" if on_data else "student"
        [batch] = self.complete([inputs], source, evaluating=True)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, batch)
        return loss.detach(), None, None

    # --- logging --------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add on-policy share, completion tokens and tokens/s to each training log."""
        if "loss" in logs and self._since_log["steps"]:
            now = time.perf_counter()
            elapsed = now - (self._last_log_time or now)
            logs["on_policy"] = self._since_log["on_policy_steps"] / self._since_log["steps"]
            logs["completion_tokens"] = int(self._since_log["completion_tokens"])
            logs["tokens_per_second"] = self._since_log["completion_tokens"] / max(elapsed, 1e-9)
            logs["generation_seconds"] = self._since_log["generation_seconds"]
            if self.args.max_staleness:  # the most optimizer steps an on-policy sample lagged the weights
                logs["staleness"] = int(self._since_log["staleness"])
            if isinstance(self.teacher, CrossTokenizerTeacher):  # the share of the tokens on each loss path
                counted = sum(self._since_log[f"{name}_tokens"] for name in PATHS)
                for name in PATHS:
                    logs[f"{name}_share"] = self._since_log[f"{name}_tokens"] / max(counted, 1)
                # of the completions: not the student tokenizer's own tokenisation of their text
                logs["non_canonical_share"] = self._since_log["non_canonical"] / max(
                    self._since_log["completions"], 1
                )
            self._since_log.clear()
            self._last_log_time = now
        super().log(logs, start_time)
