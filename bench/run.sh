#!/usr/bin/env bash
# The one benchmark call, run on the GPU machine from the repository root:
#
#   bench/run.sh [BIN]        (BIN: .dev/diffattn if present, else target/release/diffattn)
#
# It builds nothing. In one call, on one machine, it runs the read-bandwidth probe (with the
# dispatch floor), `diffattn bench gemm` (the prompt products and the tensor-core ceiling), the
# `diffattn bench attention` rows, the `diffattn bench generate` rows, a placement check (one row
# again in six fresh processes), bench/pytorch_baseline.py and bench/pytorch_generate.py, then
# bench/collect.py. Everything goes to OUTDIR=${OUT:-bench/out}:
#   ours.jsonl  torch.jsonl  adapters.json  log.txt  results/<date>-<gpu>.json  BENCHMARKS.md
# A failing row is logged and skipped; the run goes on. Progress (with elapsed seconds) on stderr.
# Budget: about 8 minutes on an H200 for the attention part, 4 for generation; a call has 10, so
# PART=attention and PART=generate split the run in two calls (each writes its own results file and
# its own table; without PART everything runs). Env: PREFILL_F16=1 adds the f16 prefill row;
# ROW_TIMEOUT / TORCH_TIMEOUT (seconds) bound one diffattn process and the PyTorch script.
set -euo pipefail

if [[ $# -ge 1 ]]; then
    BIN=$1
elif [[ -x .dev/diffattn ]]; then
    BIN=.dev/diffattn
else
    BIN=target/release/diffattn
fi
OUTDIR=${OUT:-bench/out}
ROW_TIMEOUT=${ROW_TIMEOUT:-120}
TORCH_TIMEOUT=${TORCH_TIMEOUT:-300}
REPEATS=30
PART=${PART:-}
want() { [[ -z $PART || $PART == "$1" ]]; }

mkdir -p "$OUTDIR"
OURS=$OUTDIR/ours.jsonl
TORCH=$OUTDIR/torch.jsonl
LOG=$OUTDIR/log.txt
: >"$OURS"
: >"$TORCH"
: >"$LOG"
FAILED=0

progress() {
    echo "[bench +${SECONDS}s] $*" | tee -a "$LOG" >&2
}

# Runs a command with a time limit where `timeout` exists.
bounded() {
    local limit=$1
    shift
    if command -v timeout >/dev/null; then
        timeout "$limit" "$@"
    else
        "$@"
    fi
}

# One diffattn invocation: JSON lines appended to ours.jsonl, stderr to the log, failure logged.
ours() {
    local out rc=0
    out=$(mktemp)
    progress "diffattn $*"
    bounded "$ROW_TIMEOUT" "$BIN" "$@" >"$out" 2>>"$LOG" || rc=$?
    cat "$out" >>"$OURS"
    rm -f "$out"
    if [[ $rc -ne 0 ]]; then
        FAILED=$((FAILED + 1))
        progress "FAILED (exit $rc): diffattn $*"
    fi
}

# attention MODE H K D S DTYPE REPEATS [extra flags...]
attention() {
    local mode=$1 h=$2 k=$3 d=$4 s=$5 dt=$6 reps=$7
    shift 7
    ours bench attention --mode "$mode" --variant both --heads "$h" --kv-heads "$k" \
        --head-dim "$d" --seq "$s" --kv-dtype "$dt" --repeats "$reps" --rotate auto --json "$@"
}

progress "binary $BIN, output $OUTDIR"
if [[ ! -x $BIN ]]; then
    progress "no executable $BIN: diffattn rows will all fail"
fi

"$BIN" adapters --json 2>>"$LOG" | head -c 20000 >"$OUTDIR/adapters.json" || true

ours bench bandwidth --json

if want attention; then
    # The prompt products and the tensor-core ceiling (the figure prefill is compared with).
    ours bench gemm --json
    ours bench gemm --m 4096 --n 1536 --k 384 --kernel gemm_coop --json
    # Decode, f16 K/V: both layer shapes over the cache lengths.
    for shape in "32 8 128" "16 4 64"; do
        read -r H K D <<<"$shape"
        for S in 1024 4096 16384 32768 65536; do
            attention decode "$H" "$K" "$D" "$S" f16 "$REPEATS"
        done
    done
    # Decode, f32 K/V: the long caches only.
    for shape in "32 8 128" "16 4 64"; do
        read -r H K D <<<"$shape"
        for S in 16384 65536; do
            attention decode "$H" "$K" "$D" "$S" f32 "$REPEATS"
        done
    done
    # The small model's shape.
    for S in 1024 4096; do
        attention decode 6 2 64 "$S" f16 "$REPEATS"
    done

    # Prefill, N = S = 4096, causal.
    attention prefill 32 8 128 4096 f32 5
    if [[ -e .dev/has_f16_prefill || ${PREFILL_F16:-0} == 1 ]]; then
        attention prefill 32 8 128 4096 f16 5
    fi

    # Placement and start-up: the same row in six fresh processes (collect.py compares them with
    # the first; a slow state after idle once hit about one process in five).
    for p in 1 2 3 4 5 6; do
        progress "placement process $p"
        ours bench attention --mode decode --variant diff --heads 32 --kv-heads 8 --head-dim 128 \
            --seq 65536 --kv-dtype f16 --repeats "$REPEATS" --rotate auto --json
    done

    progress "pytorch baseline"
    if bounded "$TORCH_TIMEOUT" python3 bench/pytorch_baseline.py >>"$TORCH" 2>>"$LOG"; then
        progress "pytorch baseline done ($(wc -l <"$TORCH") lines)"
    else
        progress "pytorch baseline FAILED (exit $?); the table will have no PyTorch values"
    fi
fi

if want generate; then
    # Token generation, batch 1, greedy: the shipped model (short and long prompt, f32 and f16 KV) and
    # the SmolLM2-135M shape with random f16 and Q4_1 weights.
    for kv in f32 f16; do
        for P in 16 454; do
            ours bench generate --model models/diffv2-small --prompt-tokens "$P" --tokens 256 --kv "$kv" --json
        done
    done
    ours bench generate --random-config smollm2-135m --weights f16 --kv f16 --prompt-tokens 16 --tokens 256 --json
    # The same shape as a Q4_1 GGUF file (random weights, written by the project's GGUF writer;
    # the real SmolLM2 file is too large to carry here), blocks kept on the GPU.
    ours bench generate --random-config smollm2-135m --weights q4_1 --kv f16 --prompt-tokens 16 --tokens 256 --json
    # Sampled on the GPU (temperature 0.8 with the sampler's defaults), against our greedy rows.
    ours bench generate --model models/diffv2-small --prompt-tokens 16 --tokens 256 --kv f16 --temperature 0.8 --json

    progress "pytorch generation baseline"
    if bounded "$TORCH_TIMEOUT" python3 bench/pytorch_generate.py >>"$TORCH" 2>>"$LOG"; then
        progress "pytorch generation baseline done"
    else
        progress "pytorch generation baseline FAILED (exit $?); generation rows will have no PyTorch values"
    fi
fi

# The GPU machine gets a copy of the working tree whose .git may not be this checkout's: a
# .dev/commit written where the binary was built wins.
COMMIT=$(cat .dev/commit 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -f docs/BENCHMARKS.md ]]; then
    cp docs/BENCHMARKS.md "$OUTDIR/BENCHMARKS.md"
fi
progress "collect (commit $COMMIT)"
if ! python3 bench/collect.py --ours "$OURS" --torch "$TORCH" --commit "$COMMIT" ${PART:+--part "$PART"} \
    --out-dir "$OUTDIR/results" --docs "$OUTDIR/BENCHMARKS.md" 2>>"$LOG"; then
    progress "collect FAILED: raw lines are in $OURS and $TORCH"
    exit 1
fi
progress "done: $FAILED diffattn invocation(s) failed; see $LOG"
