#!/usr/bin/env bash
# Issue 24's tables: vanilla, profile, few-shot, OPRO, Fermi and Fermi + few-shot on the first
# eligible dev users, one `personalign bench opinionqa` run folder per preset.
#
#     benchmarks/fermi_table.sh                          # quick preset, 30 users -> runs/quick30
#     PRESET=paper USERS=12 benchmarks/fermi_table.sh    # paper preset, 12 users -> runs/paper12
#
# Each run resumes (a stopped run keeps every finished user x method); the report covers the
# users whose every method is done. The models are named, not left to the CPU-dependent
# defaults, so a run means the same on every machine. FIRST (a comma list of methods) runs
# those methods on every user before the rest, so that a long run stopped early still has
# them on all its users: FIRST=fermi,fermi+fewshot PRESET=paper USERS=12 ...
set -euo pipefail
cd "$(dirname "$0")/.."
PERSONALIGN=${PERSONALIGN:-.venv/bin/personalign}
PRESET=${PRESET:-quick}
USERS=${USERS:-30}
OUT=${OUT:-runs/$PRESET$USERS}
METHODS=${METHODS:-vanilla,profile,fewshot,opro,fermi,fermi+fewshot}
FIRST=${FIRST:-}
COMMON=(--data ../shared/data/opinionqa/dev.jsonl --preset "$PRESET" --users "$USERS"
        --workers 2 --threads 2 --task-model qwen2.5-coder-1.5b-instruct
        --optimizer-model llamacpp:qwen2.5-coder-1.5b-instruct --out "$OUT")

if [ -n "$FIRST" ]; then
  echo "== $(date -u +%H:%M:%S) $FIRST on $USERS users, preset $PRESET -> $OUT"
  "$PERSONALIGN" bench opinionqa "${COMMON[@]}" --methods "$FIRST" "$@"
fi
echo "== $(date -u +%H:%M:%S) $METHODS on $USERS users, preset $PRESET -> $OUT"
"$PERSONALIGN" bench opinionqa "${COMMON[@]}" --methods "$METHODS" "$@"
