#!/usr/bin/env bash
# The main demo on the embedded defaults: SQLite, the local provider, bubblewrap and an
# image built from containers/. Starts a harvester (unless one answers at HPCAF_URL),
# submits a task, waits for it and prints its results; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

export HPCAF_HOME="${HPCAF_HOME:-$HOME/.hpcaf}"
export HPCAF_URL="${HPCAF_URL:-http://127.0.0.1:8080}"
export HPCAF_IMAGE_CACHE="${HPCAF_IMAGE_CACHE:-$HPCAF_HOME/images}"
user="${HPCAF_DEMO_USER:-demo}"
py=python3

up() { $py -c 'import httpx, sys; httpx.get(sys.argv[1] + "/docs", timeout=1).raise_for_status()' "$HPCAF_URL" >/dev/null 2>&1; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "image: base (containers/base.def)"
$py -m harvester.cli image build containers/base.def --name base

started=""
if ! up; then
  step "starting the harvester ($HPCAF_URL, home $HPCAF_HOME)"
  port="${HPCAF_URL##*:}"
  HPCAF_PORT="$port" $py -m harvester.cli serve >"$HPCAF_HOME/demo-harvester.log" 2>&1 &
  started=$!
  trap '[ -n "$started" ] && kill "$started" 2>/dev/null; wait "$started" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    up && break
    kill -0 "$started" 2>/dev/null || { cat "$HPCAF_HOME/demo-harvester.log"; exit 1; }
    sleep 0.2
  done
fi
export HPCAF_TOKEN="${HPCAF_TOKEN:-$($py -m harvester.cli token create "$user")}"

step "pcontainer: a containerized task of 2 jobs"
out=$($py -m harvester.client.pcontainer --containerImage base \
  --exec 'echo "Hello World from job $HPCAF_JOB_INDEX on $(uname -n)" > hello.txt' \
  --outputs hello.txt --nJobs 2 --outDS "user.$user.demo.$(date +%s)")
echo "$out"
task="${out#jediTaskID=}"

step "pbook wait $task"
$py -m harvester.client.pbook wait "$task" --timeout 600

step "pbook jobs $task"
$py -m harvester.client.pbook jobs "$task"

step "pbook results $task -o $HPCAF_HOME/demo-results/$task"
$py -m harvester.client.pbook results "$task" -o "$HPCAF_HOME/demo-results/$task"
cat "$HPCAF_HOME/demo-results/$task"/*
