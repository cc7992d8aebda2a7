#!/usr/bin/env bash
# Device check: seqmodels on one GPU machine, cold, in at most 300 s, writing $OUT/summary.md,
# $OUT/results.json (every figure) and $OUT/driver.log (everything printed). This shell only
# installs the carried wheels, unpacks the data and execs ONE Python process
# (scripts/device_check/driver.py) that imports everything once, measures the boot (imports,
# CUDA init, first cuDNN call) and runs the sections as functions, each under its own deadline
# (scripts/device_check/plan.py: names, budgets, what each checks). A section that overruns is
# recorded TIMEOUT with the rows it had, and the next one starts; the summary is rewritten
# after every section.
#
#   scripts/device_check.sh --fetch-wheels   # here, once, with network: fill .device_carry/
#                                            # (`make device-wheels`)
#   scripts/device_check.sh                  # on the GPU machine: every section, <= 300 s
#   scripts/device_check.sh --full-runs      # on the GPU machine: the three default
#                                            # experiments to the end, <= 300 s
#   scripts/device_check.sh --cpu-dry-run    # the same code on the CPU at tiny sizes (CI:
#                                            # tests/test_device_check.py)
#   scripts/device_check.sh --sections throughput,syncs    # some sections only
#   scripts/device_check.sh --varlen padded,packed         # what throughput compares
#   scripts/device_check.sh --list           # sections, GPU and dry-run budgets
#
# The project's GPU machines have torch and Lightning but no Hydra, no network and no copy of
# the data: .device_carry/ (git-ignored) holds the wheels of what they lack (hydra-core,
# omegaconf, antlr4-python3-runtime; installed with pip --no-index --no-deps into
# $WORK/site) and data.tar.gz (SST-2, UD-EWT, Tiny Shakespeare). seqmodels runs from src/.
# Data: $SEQMODELS_DATA_DIR, else ../shared/data, else .device_carry/data.tar.gz (a dry run
# always writes tiny data).
set -uo pipefail
SHELL_START=$(date +%s.%N)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CARRY=.device_carry
WHEELS=(hydra-core omegaconf antlr4-python3-runtime)

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

DRY=0
FETCH=0
DRIVER_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu-dry-run) DRY=1; DRIVER_ARGS+=(--cpu-dry-run) ;;
    --fetch-wheels) FETCH=1 ;;
    --full-runs|--list) DRIVER_ARGS+=("$1") ;;
    --sections|--varlen)
      [[ $# -ge 2 ]] || { echo "device_check: $1 needs a value" >&2; exit 2; }
      DRIVER_ARGS+=("$1" "$2"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "device_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ " ${DRIVER_ARGS[*]} " == *" --list "* ]]; then
  exec "$PYTHON" scripts/device_check/driver.py "${DRIVER_ARGS[@]}"
fi

# -- --fetch-wheels: here, with network --------------------------------------------------------
if [[ $FETCH -eq 1 ]]; then
  set -e
  rm -rf "$CARRY/wheels" && mkdir -p "$CARRY/wheels"
  # The versions this checkout's environment runs (pure-Python packages: one wheel fits all).
  PINS=$("$PYTHON" -c 'import sys; from importlib.metadata import version as v
print(" ".join(f"{n}=={v(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}")
  "$PYTHON" -m pip download --quiet --no-deps -d "$CARRY/wheels" $PINS
  for sdist in "$CARRY"/wheels/*.tar.gz; do  # antlr4 4.9.3 is published as a source tarball
    [[ -e $sdist ]] || continue
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$CARRY/wheels" "$sdist" && rm "$sdist"
  done
  if [[ -d ../shared/data ]]; then
    tar -czf "$CARRY/data.tar.gz" -C ../shared/data sst2 ud_ewt tinyshakespeare
  else
    echo "device_check: no ../shared/data here: $CARRY/data.tar.gz not made" >&2
  fi
  ls -l "$CARRY" "$CARRY/wheels"
  echo "device_check: $PINS in $CARRY/wheels; $(du -sh "$CARRY" | cut -f1) to carry"
  exit 0
fi

# -- setup: wheels, data, then the driver -----------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
OUT=${OUT:-logs/device_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/driver.log") 2>&1
echo "device_check: setting up in $WORK; output in $OUT"
NOTES=()
if compgen -G "$CARRY/wheels/*.whl" > /dev/null; then
  if "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
      --target "$WORK/site" "$CARRY"/wheels/*.whl; then
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
    NOTES+=(--note "wheels installed from $CARRY/wheels: $(cd "$CARRY/wheels" && echo *.whl)")
  else
    NOTES+=(--note "**installing $CARRY/wheels failed** (driver.log has pip's message)")
  fi
elif ! "$PYTHON" -c 'import hydra, omegaconf' 2> /dev/null; then
  NOTES+=(--note "**hydra-core / omegaconf missing and no $CARRY/wheels**: make device-wheels")
fi

if [[ $DRY -eq 0 ]]; then
  if [[ -n "${SEQMODELS_DATA_DIR:-}" ]]; then
    NOTES+=(--note "data: SEQMODELS_DATA_DIR=$SEQMODELS_DATA_DIR")
  elif [[ -d ../shared/data ]]; then
    export SEQMODELS_DATA_DIR=$(cd ../shared/data && pwd)
  elif [[ -f $CARRY/data.tar.gz ]]; then
    mkdir -p "$WORK/data" && tar -xzf "$CARRY/data.tar.gz" -C "$WORK/data" \
      && export SEQMODELS_DATA_DIR=$WORK/data \
      && NOTES+=(--note "data: $CARRY/data.tar.gz unpacked")
  else
    NOTES+=(--note "**no data**: neither ../shared/data nor $CARRY/data.tar.gz; runs download")
  fi
else
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
echo "device_check: setup took $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $SHELL_START}") s"
exec "$PYTHON" scripts/device_check/driver.py --work "$WORK" --out "$OUT" \
  --shell-start "$SHELL_START" "${NOTES[@]}" "${DRIVER_ARGS[@]}"
