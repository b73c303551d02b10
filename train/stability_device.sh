#!/usr/bin/env bash
# One call of the stability sweep (docs/stability.md) on the GPU machine.
#
#   bash train/stability_device.sh SLICE          e.g. 1            (one H200, ~330 s)
#   bash train/stability_device.sh 1,2,3,4,5,6                      (one slice per GPU, in parallel)
#   bash train/stability_device.sh 1a             half a slice (3 runs), if a whole one does not fit
#   bash train/stability_device.sh 2b+3           slices joined by '+': one lock-step on one GPU
#                                                 (9 runs here, ~440 s: STAB_WALL=585)
#
# Needs, in the working tree it runs in: .traindata/src/{corpus_lit.txt.xz,corpus_docs.txt.xz,
# SHA256SUMS} (copies of ../shared/data, carried: the machine is offline), the committed
# tokenizer models/diffv2-small/tokenizer.json, python3 with torch, numpy and tokenizers, and
# $OUT (the folder whose files come back). Writes $OUT/stability-slice<S>.json.xz per slice and
# one $OUT/stdout-slices-<list>.log with the console output of all of them ('+' becomes '_' in
# these names: stability-slice2b_3.json.xz).
#
# STAB_SAVE=RUN[,RUN] (runs of a one-slice call) also writes their f16 weights to $OUT/RUN/
# (4 files each with the config and index; mind the 8 files that come back).
#
# The whole call is kept inside STAB_WALL seconds (default 540): what is left after the
# tokenisation goes to the trainer as --time-budget, and the trainer exits with status 3
# ("TIME GUARD") instead of cutting a run short. Any failure ends the script with a non-zero
# status and a line saying which slice failed and why.
set -euo pipefail

T0=$(date +%s)
SLICES=${1:?usage: train/stability_device.sh SLICE[,SLICE...]  (slices 1-6, see docs/stability.md)}
: "${OUT:?OUT must name the output folder}"
SRC=${STAB_SRC:-.traindata/src}
DATA=${STAB_DATA:-.traindata/stab}
WALL=${STAB_WALL:-540}
export PYTHONUNBUFFERED=1

fail() { echo "stability_device.sh: FAILED: $*" >&2; exit 1; }
elapsed() { echo $(( $(date +%s) - T0 )); }

cd "$(dirname "$0")/.."
echo "== $(date -u +%FT%TZ) stability sweep, slices $SLICES, wall limit ${WALL}s"
for f in corpus_lit.txt.xz corpus_docs.txt.xz SHA256SUMS; do
    [ -f "$SRC/$f" ] || fail "$SRC/$f is missing (copy ../shared/data/$f there and carry $SRC)"
done
[ -f models/diffv2-small/tokenizer.json ] || fail "models/diffv2-small/tokenizer.json is missing"
python3 -c "import torch, numpy, tokenizers; print('torch', torch.__version__, 'numpy', numpy.__version__, 'tokenizers', tokenizers.__version__)" \
    || fail "python3 lacks torch, numpy or tokenizers"
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ -n "${STAB_CPU_TEST:-}" ]; then
    # Only for trying this script on a CPU host (with STAB_SRC pointing at a tiny corpus and
    # STAB_TRAIN_ARGS giving a tiny model and --device cpu): as many pretend GPUs as slices.
    NGPU=6
    echo "STAB_CPU_TEST: no GPU needed"
else
    [ "$NGPU" -ge 1 ] || fail "no CUDA device visible"
    nvidia-smi -L || true
fi

IFS=',' read -r -a LIST <<< "$SLICES"
[ "${#LIST[@]}" -le "$NGPU" ] || fail "${#LIST[@]} slices need ${#LIST[@]} GPUs, this machine has $NGPU"
for s in "${LIST[@]}"; do
    IFS='+' read -r -a PARTS <<< "$s"
    for p in "${PARTS[@]}"; do
        case "$p" in [1-6]|[1-6][ab]) ;; *) fail "unknown slice '$p' in '$s' (1-6, or a half: 1a..6b, joined by '+')";; esac
    done
done

echo "== $(elapsed)s: tokenising both corpora (checksums verified)"
python3 train/stability.py prepare --src "$SRC" --out "$DATA" || fail "prepare"
python3 train/stability.py plan --data "$DATA"

BUDGET=$(( WALL - $(elapsed) - 20 ))
[ "$BUDGET" -gt 60 ] || fail "only ${BUDGET}s left for training"
echo "== $(elapsed)s: training, --time-budget ${BUDGET}s per slice"
LOGDIR=$(mktemp -d)
PIDS=()
# GPU i of this machine: the i-th entry of a CUDA_VISIBLE_DEVICES already set (ids or UUIDs),
# else index i.
IFS=',' read -r -a VISIBLE <<< "${CUDA_VISIBLE_DEVICES:-}"
for i in "${!LIST[@]}"; do
    s=${LIST[$i]}
    GPU=${VISIBLE[$i]:-$i}
    CUDA_VISIBLE_DEVICES=$GPU python3 train/stability.py train --slice "$s" --data "$DATA" \
        --out "$OUT/stability-slice${s//+/_}.json.xz" --time-budget "$BUDGET" ${STAB_TRAIN_ARGS:-} \
        ${STAB_SAVE:+--save "$STAB_SAVE"} \
        > "$LOGDIR/slice$s.log" 2>&1 &
    PIDS+=($!)
    echo "slice $s: pid ${PIDS[$i]} on GPU $GPU"
done
if [ "${#LIST[@]}" -eq 1 ]; then
    # One slice: follow its output so that progress shows in the call's output.
    tail -n +1 -f "$LOGDIR/slice${LIST[0]}.log" --pid "${PIDS[0]}" &
    TAILPID=$!
fi
FAILED=()
for i in "${!LIST[@]}"; do
    rc=0
    wait "${PIDS[$i]}" || rc=$?
    if [ "$rc" -ne 0 ]; then
        why="exit status $rc"
        [ "$rc" -eq 3 ] && why="exit status 3: TIME GUARD, the slice would not fit its budget"
        FAILED+=("slice ${LIST[$i]} ($why)")
    fi
done
if [ "${#LIST[@]}" -eq 1 ]; then
    wait "$TAILPID" || true
else
    for s in "${LIST[@]}"; do echo "---- slice $s (last lines)"; tail -n 12 "$LOGDIR/slice$s.log"; done
fi
STDOUT="$OUT/stdout-slices-${SLICES//,/-}.log"
STDOUT=${STDOUT//+/_}   # plain file names: '+' joins slices on the command line only
for s in "${LIST[@]}"; do echo "==== slice $s"; cat "$LOGDIR/slice$s.log"; done > "$STDOUT"
ls -l "$OUT"
[ "${#FAILED[@]}" -eq 0 ] || fail "${FAILED[*]}; see $STDOUT"
echo "== $(elapsed)s: done, slices $SLICES"
