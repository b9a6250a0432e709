"""The `openai` engine: any OpenAI-compatible server's /v1/completions, with token-id prompts.

Prompts are sent as token arrays (vLLM and llama.cpp's server accept them; the chat template was
applied locally, so the server adds nothing). Completions come back as text, re-encoded with the
local tokenizer unless the server reports the generated ids (llama.cpp does). Completion log-probs
(likelihood scores) are read with `echo`, which vLLM's server supports and llama.cpp's ignores (a
clear error then names what works); a teacher's top-K at every completion position with vLLM's
`prompt_logprobs`, several prompts per request. Requests run on a
thread pool of `max_concurrency` workers (the bound on requests in flight); timeouts and retries with
exponential backoff on connection errors, 408/409/429 and 5xx are the openai client's own. Sampling
knobs we do not send keep the server's defaults (e.g. llama.cpp samples with top_k=40 and min_p=0.05
unless told otherwise); greedy decoding is unaffected.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import torch
from tqdm.auto import tqdm

from selftaught.generation.base import (
    TOP_LOGPROBS,
    EngineSettings,
    SamplingParams,
    TooFewLogprobsError,
    TopLogprobs,
    api_key,
    candidate_distribution,
    top_logprobs_of_positions,
)

# Completions scored per /v1/completions request by `completion_top_logprobs`: fewer round trips than
# one a request, and a response small enough to resend on a retry (about 0.6 MB a completion of 96
# tokens at K = 32).
PROMPTS_PER_REQUEST = 4


class OpenAIEngine:
    """Generation and next-token scoring through an OpenAI-compatible completions endpoint."""

    def __init__(
        self, settings: EngineSettings, tokenizer, prompts_per_request: int = PROMPTS_PER_REQUEST
    ) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.prompts_per_request = prompts_per_request
        self.token_strings: dict[int, str] = {}  # our tokenizer's string of each id, as the server decodes it
        self.client = openai.OpenAI(
            base_url=settings.base_url,
            api_key=api_key(settings),
            timeout=settings.request_timeout,
            max_retries=settings.max_retries,
        )
        self.model = settings.served_model or self._call(lambda: self.client.models.list().data[0].id)
        self.name = f"openai:{settings.base_url.rstrip('/')}/{self.model}"
        self.context_length = None  # the server's own limit: it refuses a longer prompt itself

    def _call(self, request):
        """Run one request; after the client's retries, a connection failure names the server."""
        try:
            return request()
        except openai.APIConnectionError as err:  # timeouts included; HTTP errors carry their own status
            raise ConnectionError(
                f"{self.settings.base_url}: no answer after {self.settings.max_retries} retries ({err}); "
                "is the server running and --base_url right?"
            ) from err

    def _map(self, fn, items: list, desc: str | None) -> list:
        """`fn` over `items`, `max_concurrency` requests in flight; a progress bar named `desc`, none for
        `desc=None` (as `hf.generate_all`: a training step's requests, where a bar each step is noise)."""
        with ThreadPoolExecutor(self.settings.max_concurrency) as pool:
            bar = tqdm(pool.map(fn, items), total=len(items), desc=desc, leave=False, disable=desc is None)
            return list(bar)

    def _complete_one(self, prompt: list[int], params: SamplingParams) -> list[int]:
        response = self._call(
            lambda: self.client.completions.create(
                model=self.model,
                prompt=prompt,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                stop=list(params.stop) or None,
                logprobs=1,  # so that llama.cpp reports the ids it generated
            )
        )
        choice = response.choices[0]
        if params.stop:  # the text is cut before the stop string: re-encode it, as hf's `cut_at_stop` does
            return self.tokenizer.encode(choice.text, add_special_tokens=False)
        ids = reported_ids(choice)
        if ids is None:  # text only: re-encoded, with the EOS that "stop" means (the text leaves it out)
            ids = self.tokenizer.encode(choice.text, add_special_tokens=False)
            ids += [self.tokenizer.eos_token_id] if choice.finish_reason == "stop" else []
        return ids

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, desc: str | None = "generating"
    ) -> list[list[int]]:
        return self._map(lambda p: self._complete_one(p, params), prompts, desc)

    def _top_logprobs(self, prompt: list[int]) -> dict[str, float]:
        response = self._call(
            lambda: self.client.completions.create(
                model=self.model, prompt=prompt, max_tokens=1, temperature=0, logprobs=TOP_LOGPROBS
            )
        )
        return top_logprobs_of(response.choices[0])

    def next_token_probs(
        self, prompts: list[list[int]], candidate_ids: list[int], desc: str | None = "scoring"
    ) -> torch.Tensor:
        """Read from the top log-probs of one generated token; candidates are matched by their text."""
        texts = [self.tokenizer.decode([i]) for i in candidate_ids]
        tops = self._map(self._top_logprobs, prompts, desc)
        return torch.stack([candidate_distribution(top, texts) for top in tops])

    def _echoed(self, prompt: list[int], completion: list[int]) -> list[float]:
        if not completion:
            return []
        response = self._call(
            lambda: self.client.completions.create(
                model=self.model,
                prompt=prompt + completion,
                max_tokens=1,
                temperature=0,
                echo=True,
                logprobs=1,
            )
        )
        return echoed_logprobs(response.choices[0], len(prompt), len(completion), self.settings.base_url)

    def completion_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], desc: str | None = "scoring"
    ) -> list[list[float]]:
        """The completions API with `echo`: prompt and completion sent as one token list, and the log-probs
        the server reports for its own prompt tokens read at the completion's positions."""
        return self._map(lambda pair: self._echoed(*pair), list(zip(prompts, completions, strict=True)), desc)

    def _prompt_logprobs(self, pairs: list[tuple[list[int], list[int]]], k: int) -> list[TopLogprobs]:
        def request():
            try:
                return self.client.completions.create(
                    model=self.model,
                    prompt=[p + c for p, c in pairs],
                    max_tokens=1,
                    temperature=0,
                    extra_body={"prompt_logprobs": k},
                )
            except openai.BadRequestError as err:
                raise self._named(err, k) from err

        choices = sorted(self._call(request).choices, key=lambda choice: choice.index)
        return [
            self._served_top_logprobs(choice, prompt, completion, k)
            for choice, (prompt, completion) in zip(choices, pairs, strict=True)
        ]

    def _named(self, err: openai.BadRequestError, k: int) -> Exception:
        """The error a refused prompt log-probs request stands for, where we know it (vLLM's messages)."""
        server = self.settings.base_url
        if err.param == "prompt_logprobs":  # "Requested prompt logprobs of 64, which is greater than max ..."
            return TooFewLogprobsError(
                f"{server} refuses {k} log-probs per position ({err.message}): start the vLLM server with "
                f"--max-logprobs {k} or more, or ask for fewer"
            )
        if "out of vocabulary" in err.message:  # "Token id 60000 is out of vocabulary"
            return TokenizerMismatchError(
                f"{server} has fewer tokens than this run's tokenizer ({self.tokenizer.name_or_path}, "
                f"{len(self.tokenizer)}): {err.message}. The served teacher must share the student's "
                "tokenizer."
            )
        return err

    def completion_top_logprobs(
        self, prompts: list[list[int]], completions: list[list[int]], k: int, desc: str | None = "scoring"
    ) -> list[TopLogprobs]:
        """vLLM's `prompt_logprobs` = K over [prompt | completion], `prompts_per_request` completions per
        request; the server's tokenizer is checked against ours on every token scored."""
        if any(not p for p in prompts):
            raise ValueError("every completion needs a prompt of at least one token to be scored after")
        pairs = list(zip(prompts, completions, strict=True))
        size = self.prompts_per_request
        batches = [pairs[start : start + size] for start in range(0, len(pairs), size)]
        scored = self._map(lambda batch: self._prompt_logprobs(batch, k), batches, desc)
        return [top for batch in scored for top in batch]

    def _served_top_logprobs(self, choice, prompt: list[int], completion: list[int], k: int) -> TopLogprobs:
        server = self.settings.base_url
        positions = (choice.model_extra or {}).get("prompt_logprobs")
        if positions is None:
            raise PromptLogprobsUnsupportedError(
                f"{server} returned no prompt log-probs (vLLM's `prompt_logprobs` on /v1/completions; "
                "llama.cpp's server, for one, ignores it). A served teacher needs them: serve it with vLLM, "
                "`python -m vllm.entrypoints.openai.api_server --model DIR --max-logprobs K` (or `vllm serve "
                "DIR --max-logprobs K`)."
            )
        ranked = positions[len(prompt) :]
        if len(ranked) != len(completion):
            raise ValueError(
                f"{server} returned prompt log-probs for {len(positions)} positions, not the "
                f"{len(prompt) + len(completion)} tokens sent"
            )
        for entries, token in zip(ranked, completion, strict=True):
            self._check_token_string(token, (entries.get(str(token)) or {}).get("decoded_token"))
        return top_logprobs_of_positions(
            [{int(i): (e["logprob"], e["rank"]) for i, e in entries.items()} for entries in ranked],
            completion,
            k,
            server,
        )

    def _check_token_string(self, token: int, served: str | None) -> None:
        """The server decodes `token` as our tokenizer does, or we are being scored by another vocabulary.

        vLLM decodes each id alone (`decode([id])`), then puts back the leading spaces a SentencePiece
        tokenizer strips, and rebuilds a piece of a multi-byte character ("\ufffd" alone) from the tokens
        before it; those differences are not a different tokenizer.
        """
        if served is None:  # a server that sends no strings: nothing to compare
            return
        ours = self.token_strings.get(token)
        if ours is None:
            ours = self.token_strings[token] = self.tokenizer.decode([token])
        if served.lstrip(" ") != ours.lstrip(" ") and not ours.endswith("\ufffd"):
            raise TokenizerMismatchError(
                f"{self.settings.base_url} decodes token {token} as {served!r} where this run's tokenizer "
                f"({self.tokenizer.name_or_path}) has {ours!r}: the server's model uses another tokenizer. "
                "The served teacher must share the student's tokenizer: token ids are sent and read as "
                "they are."
            )


class EchoUnsupportedError(RuntimeError):
    """The server returns no log-probs for prompt tokens (the completions API's `echo`)."""


class PromptLogprobsUnsupportedError(RuntimeError):
    """The server returns no top log-probs for prompt tokens (vLLM's `prompt_logprobs`)."""


class TokenizerMismatchError(RuntimeError):
    """The server's tokenizer maps an id we sent to another string than ours."""


def echoed_logprobs(choice, prompt_length: int, completion_length: int, server: str) -> list[float]:
    """The log-probs of the echoed tokens [prompt_length, prompt_length + completion_length), from the
    completions API's shape (vLLM's server answers in it). A server that ignores `echo` (llama.cpp's
    returns the generated token only) gets an error that names what works instead."""
    values = choice.logprobs.token_logprobs if choice.logprobs is not None else None
    if not values or len(values) < prompt_length + completion_length:
        raise EchoUnsupportedError(
            f"{server} returned no log-probs for the prompt's tokens (the completions API's `echo` with "
            "`logprobs`; llama.cpp's server, for one, ignores it). Likelihood scores (curation modes pmi, "
            "ifd, backward; the held-out NLL) need them: use --engine hf or --engine vllm, or serve the "
            "model with `vllm serve`, whose completions API supports echo with logprobs."
        )
    return [float(v) for v in values[prompt_length : prompt_length + completion_length]]


def reported_ids(choice) -> list[int] | None:
    """The completion's token ids (EOS included) where the server reports them, as llama.cpp does.

    Re-encoding the text is not enough for exact ids: a model may generate a split the tokenizer would
    not choose (e.g. "\n\n" then "1" where encoding "\n\n1" gives "\n" and "\n1").
    """
    content = (choice.logprobs.model_extra or {}).get("content") if choice.logprobs is not None else None
    return [entry["id"] for entry in content] if content and all("id" in e for e in content) else None


def top_logprobs_of(choice) -> dict[str, float]:
    """{token text: logprob} at the first generated position, from either shape servers answer in."""
    logprobs = choice.logprobs
    if logprobs is not None and logprobs.top_logprobs:  # the completions API's own shape (vLLM, TGI)
        return dict(logprobs.top_logprobs[0])
    content = (logprobs.model_extra or {}).get("content") if logprobs is not None else None
    if content:  # llama.cpp answers in the chat-completions shape
        top: dict[str, float] = {}
        for entry in content[0]["top_logprobs"]:
            top.setdefault(entry["token"], entry["logprob"])  # two ids with one text: keep the likelier
        return top
    raise ValueError("the server returned no top log-probs; it must support `logprobs` on /v1/completions")
