#!/usr/bin/env bash
# The main demo on the embedded defaults (SQLite, the local provider, bubblewrap, images
# built from containers/): a pfit campaign over every signal patch of a real pallet,
# ending with the results table and the path of the exclusion plot.
#
#   HPCAF_PALLETS   where local pallets live (default ../shared/data/pallets); without
#                   it the staus pallet is downloaded from HEPData
#   DEMO_PALLET     pallet folder under HPCAF_PALLETS (default staus/Region-combined)
set -euo pipefail
cd "$(dirname "$0")/.."

export HPCAF_HOME="${HPCAF_HOME:-$HOME/.hpcaf}"
export HPCAF_URL="${HPCAF_URL:-http://127.0.0.1:8080}"
export HPCAF_IMAGE_CACHE="${HPCAF_IMAGE_CACHE:-$HPCAF_HOME/images}"
pallets="${HPCAF_PALLETS:-$(cd .. && pwd)/shared/data/pallets}"
pallet="${DEMO_PALLET:-staus/Region-combined}"
user="${HPCAF_DEMO_USER:-demo}"
py="${HPCAF_VENV:-.venv}/bin/python"  # the project environment (scripts/install-deps.sh)
mkdir -p "$HPCAF_HOME"

up() { $py -c 'import httpx, sys; httpx.get(sys.argv[1] + "/docs", timeout=1).raise_for_status()' "$HPCAF_URL" >/dev/null 2>&1; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "images: base and pyhf (built once from containers/*.def)"
$py -m harvester.cli image build containers/base.def --name base
$py -m harvester.cli image build containers/pyhf.def --name pyhf

started=""
if ! up; then
  step "starting the harvester ($HPCAF_URL, home $HPCAF_HOME)"
  HPCAF_PORT="${HPCAF_URL##*:}" $py -m harvester.cli serve >"$HPCAF_HOME/demo-harvester.log" 2>&1 &
  started=$!
  trap '[ -n "$started" ] && kill "$started" 2>/dev/null; wait "$started" 2>/dev/null || true' EXIT
  for _ in $(seq 1 150); do
    up && break
    kill -0 "$started" 2>/dev/null || { cat "$HPCAF_HOME/demo-harvester.log"; exit 1; }
    sleep 0.2
  done
fi
export HPCAF_TOKEN="${HPCAF_TOKEN:-$($py -m harvester.cli token create "$user")}"

if [ -d "$pallets/$pallet" ]; then
  source=(--pallet "$pallets/$pallet")
else
  source=(--pallet "https://www.hepdata.net/record/resource/1406212?view=true")
fi
plot="$HPCAF_HOME/demo-results/exclusion-$(date +%s).png"
step "pfit ${source[*]} --backend jax --wait --plot $plot"
start=$(date +%s)
$py -m harvester.client.pfit "${source[@]}" --backend jax --wait --plot "$plot"
echo "submission to plot: $(( $(date +%s) - start )) s"
echo "exclusion plot: $plot"
