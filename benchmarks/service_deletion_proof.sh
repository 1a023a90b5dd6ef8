#!/usr/bin/env bash
# Deletion proof: start `personalign serve` (embedded models, SQLite) in a fresh home, give a
# user a canary string (profile, opinion, preference pair, chat), fit FSPO shots, chat, then
# DELETE the user and search every file of the home for the canary, before and after.
#     bash benchmarks/service_deletion_proof.sh [PORT]
set -u
PORT=${1:-8790}
PY=${PYTHON:-python}
HOME_DIR=$(mktemp -d /tmp/personalign-proof.XXXXXX)
REAL_HOME=$($PY -c 'from personalign.runtime import settings; print(settings.home())')
ln -s "$REAL_HOME/models" "$HOME_DIR/models"   # prepared models, not searched (a link)
export PERSONALIGN_HOME=$HOME_DIR PERSONALIGN_ADMIN_KEY=proof-admin-key
CANARY=canaryQX42okapi
$PY -c "from personalign.cli.main import main; main()" serve --port "$PORT" >"$HOME_DIR.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 1; done
J="content-type: application/json"; A="Authorization: Bearer $PERSONALIGN_ADMIN_KEY"
B=http://127.0.0.1:$PORT/v1; U=$B/users
field() { $PY -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
KEY=$(curl -s -H "$J" -H "$A" $U -d '{"user_id": "alice", "profile": {"CITY": "'$CANARY'-town"}}' | field api_key)
K="Authorization: Bearer $KEY"
curl -s -H "$J" -H "$K" $U/alice/opinions -d '{"opinions": [{"question": "Is the '$CANARY' line worth it?", "options": ["Yes", "No"], "answer": 0}, {"question": "Do you drive?", "options": ["Yes", "No"], "answer": 1}]}'; echo
curl -s -H "$J" -H "$K" $U/alice/pairs -d '{"pairs": [{"prompt": "Plan a '$CANARY' trip", "chosen": "By tram.", "rejected": "By car."}]}'; echo
JOB=$(curl -s -H "$J" -H "$K" $U/alice/fit -d '{"method": "fspo"}' | field job_id)
for _ in $(seq 300); do
    S=$(curl -s -H "$K" $B/jobs/$JOB | field status); [ "$S" = done ] || [ "$S" = failed ] && break; sleep 1
done
echo "job $S"
curl -s -H "$J" -H "$K" $B/chat/completions -d '{"model": "personalign", "max_tokens": 12, "messages": [{"role": "user", "content": "How do I get to '$CANARY'?"}]}'; echo
echo "--- before DELETE: grep -rl $CANARY $HOME_DIR"
grep -rl "$CANARY" "$HOME_DIR"
echo "--- DELETE"
curl -s -X DELETE -H "$K" $U/alice; echo
echo "--- after DELETE: grep -rl $CANARY $HOME_DIR"
grep -rl "$CANARY" "$HOME_DIR"; echo "grep exit code $? (1: no match)"
find "$HOME_DIR" -type f
