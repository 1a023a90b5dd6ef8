#!/usr/bin/env bash
# Fermi's levers on Qwen 1.5B (issue 24), each a `personalign bench opinionqa` run at the quick
# preset over the same dev users, one run folder per variant under runs/i24/levers12/; the
# defaults' run (base) is runs/quick12/, which issue 26's DSPy peers extend on the same users.
#
#     benchmarks/fermi_levers.sh            # all variants, users in waves of 4 up to 12
#     WAVES="12" benchmarks/fermi_levers.sh # one wave of 12
#
# Users come in waves (the first 4 eligible users in every variant, then the first 8, ...), so
# a run stopped early leaves every variant measured on the same users; each run resumes. The
# models are named, not left to the CPU-dependent defaults, so the runs are the same on every
# machine. The pool variants (last_k, best) reuse base's fits from the call cache. The default
# pool is the memory's top L since these runs measured it (README); before that, base was last_k.
set -euo pipefail
cd "$(dirname "$0")/.."
PERSONALIGN=${PERSONALIGN:-.venv/bin/personalign}
OUT=${OUT:-runs/i24/levers12}
BASE=${BASE:-runs/quick12}
WAVES=${WAVES:-"4 8 12"}
COMMON=(--data ../shared/data/opinionqa/dev.jsonl --preset quick --workers 2 --threads 2
        --task-model qwen2.5-coder-1.5b-instruct
        --optimizer-model llamacpp:qwen2.5-coder-1.5b-instruct)

# name | arguments (the methods and the lever)
VARIANTS=(
  "base|--methods vanilla,profile,fewshot,fermi,fermi+fewshot"
  "last_k|--methods fermi --final-pool last_k"
  "best|--methods fermi --final-pool last_k --fermi include_best=true"
  "continuation|--methods fermi --fermi optimizer_strategy=continuation"
  "letter-pride|--methods vanilla,fermi --scoring letter-pride"
  "budget320|--methods fermi --fermi optimizer_max_tokens=320"
  "ctxfit|--methods fermi+fewshot --fermi context_at_fit=true"
)

for users in $WAVES; do
  for variant in "${VARIANTS[@]}"; do
    name=${variant%%|*}
    read -r -a args <<< "${variant#*|}"
    out=$OUT/$name; [ "$name" = base ] && out=$BASE
    echo "== $(date -u +%H:%M:%S) $name, first $users users -> $out"
    "$PERSONALIGN" bench opinionqa "${COMMON[@]}" --users "$users" "${args[@]}" --out "$out"
  done
done
