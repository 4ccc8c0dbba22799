#!/usr/bin/env bash
# The GPU check, in one run of a few minutes on a machine with an NVIDIA GPU that reaches
# no package registry (docs/gpus.md, "The GPU check"):
#
#   bench/gpu_check.sh [--cpu] [--sample N] [--pallets staus/Region-combined,1Lbb]
#
# 1. a first look (seconds): the GPU, the Python stack, bubblewrap, what is missing;
# 2. the Python modules the harvester, pilot and fits need: the machine's own (a
#    CUDA-enabled stack: HPCAF_GPU_PYTHON, default python3), else the wheels carried with
#    the project (in .gpu-carry/, HPCAF_GPU_CARRY, made beforehand by `bench/gpu_check.sh
#    --prepare` where a registry answers, with bubblewrap and the pallets), installed
#    into a scratch folder;
# 3. bench/gpu_check.py --run: discovery, a container with the device binds, and the
#    campaigns on the GPU beside the CPU (its docstring says what it prints).
#
# --cpu runs it all on the CPU (the test suite does, on a sample of patches). Pallets come
# from HPCAF_PALLETS, else the carried ones. Exit status: 0 passed, 1 a check failed, 3 something is missing
# (said plainly), 4 no GPU found.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${HPCAF_GPU_PYTHON:-$(command -v python3 || true)}"
CARRY="${HPCAF_GPU_CARRY:-.gpu-carry}"
WHEELS="$CARRY/wheels"
WHEEL_PYTHON="${HPCAF_WHEEL_PYTHON:-3.12}"
NEEDED_DISTRIBUTIONS="pyhf jsonschema jsonschema-specifications referencing rpds-py jsonpatch
  jsonpointer fastapi starlette pydantic pydantic-core annotated-types typing-inspection
  sqlalchemy greenlet alembic mako uvicorn stamina tenacity python-multipart"

if [ "${1:-}" = "--prepare" ]; then
  # Here, where a registry answers: what the GPU machine is expected to lack, into $CARRY
  # (git-ignored; carry it to that machine with the project): the wheels of the modules
  # for its Python (the versions of this project's environment), bubblewrap's Debian
  # package, and the pallets of the check.
  shift
  venv_python="${HPCAF_VENV:-.venv}/bin/python"
  pins="$("$venv_python" -c 'import importlib.metadata as m, sys
def pin(n):
    try:
        return f"{n}=={m.version(n)}"
    except m.PackageNotFoundError:  # not needed by this environment either
        return ""
print(" ".join(filter(None, map(pin, sys.argv[1:]))))' $NEEDED_DISTRIBUTIONS)" || exit 3
  mkdir -p "$WHEELS" "$CARRY/pallets"
  # shellcheck disable=SC2086
  "$venv_python" -m pip download -q --no-deps --only-binary=:all: \
    --python-version "$WHEEL_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$WHEELS" $pins || exit 3
  (cd "$WHEELS" && apt-get download bubblewrap >/dev/null) || echo "no bubblewrap package"
  root="${HPCAF_PALLETS:-../shared/data/pallets}"
  for pallet in staus/Region-combined 1Lbb; do
    mkdir -p "$CARRY/pallets/$pallet" && cp -a "$root/$pallet/." "$CARRY/pallets/$pallet/"
  done
  du -sh "$CARRY"
  exit 0
fi
if [ -z "${HPCAF_PALLETS:-}" ] && [ -d "$CARRY/pallets" ]; then
  export HPCAF_PALLETS="$PWD/$CARRY/pallets"
fi

cpu=0
for arg in "$@"; do [ "$arg" = "--cpu" ] && cpu=1; done
work="$(mktemp -d "${TMPDIR:-/tmp}/hpcaf-gpu-check.XXXXXX")"
echo "== first look"
if command -v nvidia-smi >/dev/null; then
  timeout 20 nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
    | sed 's/^/  GPU: /'
else
  echo "  GPU: no nvidia-smi on this machine"
  [ "$cpu" = 1 ] || { echo "cannot run the GPU check: no nvidia-smi (--cpu runs the CPU mode)"; exit 4; }
fi
if [ -z "$PY" ]; then
  echo "cannot run: no python3 (set HPCAF_GPU_PYTHON to the CUDA-enabled Python)"
  exit 3
fi
echo "  Python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0], sys.prefix)'))"
timeout 60 "$PY" - <<'EOF' 2>/dev/null | sed 's/^/  /'
try:
    import jax
    print("JAX", jax.__version__, "devices:", ", ".join(str(d) for d in jax.devices()))
except Exception as exc:  # the look says what it found, never stops
    print("JAX: not usable here:", type(exc).__name__, str(exc).splitlines()[0][:120])
EOF
missing="$("$PY" bench/gpu_check.py --missing)"
echo "  missing Python modules: ${missing:-none}"
if [ -n "$missing" ]; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "  installing the carried wheels of $WHEELS into $work/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$work/site" "$WHEELS"/*.whl || { echo "cannot run: the carried wheels do not install"; exit 3; }
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
    missing="$("$PY" bench/gpu_check.py --missing)"
  fi
  if [ -n "$missing" ]; then
    echo "cannot run: this machine's Python lacks $missing, and no carried wheel brings it"
    echo "(bench/gpu_check.sh --prepare where a registry answers, then carry $CARRY)"
    exit 3
  fi
fi
if ! command -v bwrap >/dev/null; then
  deb="$(ls "$WHEELS"/bubblewrap_*.deb 2>/dev/null | head -1)"
  if [ -n "$deb" ]; then
    dpkg -x "$deb" "$work/bwrap" && export PATH="$work/bwrap/usr/bin:$PATH"
  fi
fi
command -v bwrap >/dev/null || { echo "cannot run: no bubblewrap (bwrap) here, none carried"; exit 3; }
echo "  bubblewrap: $(bwrap --version)"
export HPCAF_GPU_PYTHON="$PY"
"$PY" bench/gpu_check.py --run --work "$work" "$@"
status=$?
rm -rf "$work"
exit $status
