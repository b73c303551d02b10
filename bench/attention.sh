#!/usr/bin/env bash
# The attention benchmark set: decode at 16k and 64k keys for two layer shapes, f32 and f16 K/V, and a
# 4k prefill, each with DIFF V2 and standard attention side by side in one run (same h_kv).
# Usage: bench/attention.sh [path/to/diffattn] > results.txt
set -euo pipefail
B=${1:-target/release/diffattn}
"$B" adapters | head -1
for shape in "16 4 64" "32 8 128"; do
    set -- $shape
    for dt in f32 f16; do
        for S in 16384 65536; do
            "$B" bench attention --mode decode --variant both --heads "$1" --kv-heads "$2" --head-dim "$3" --seq "$S" --kv-dtype "$dt" --repeats 30
        done
    done
    "$B" bench attention --mode prefill --variant both --heads "$1" --kv-heads "$2" --head-dim "$3" --seq 4096 --repeats 5
done
