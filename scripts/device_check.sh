#!/usr/bin/env bash
# Device check: one command that checks seqmodels on a GPU machine in under 8 minutes and writes
# $OUT/summary.md (plus results.json and logs.tar.gz). Each section runs in its own process under
# its own timeout and is recorded PASS, FAIL or SKIP with its output tail; a failure never stops
# the sections after it. Figures from a GPU go to docs/benchmarks_gpu.md.
#
#   env           torch / CUDA / cuDNN / Lightning / Hydra versions and where they came from
#   cuda_tests    the tests `pytest -k cuda` selects (a cuda marker or parameter), run on the GPU
#   throughput    per task, 32-true / bf16-mixed / 16-mixed: tokens/s of train(cfg) with default
#                 callbacks vs a plain PyTorch loop on the same GPU, cuDNN kernels, peak memory
#   syncs         host syncs per training step (torch.cuda.set_sync_debug_mode) per task
#   deterministic trainer.deterministic=true twice per task: bit-identical weights and metrics
#   generation    the char LM's greedy text on the GPU vs the CPU
#   ddp           seqmodels-train ... trainer=ddp on every GPU of the machine, fit and test
#   resume        the default experiment with default callbacks, resumed from last.ckpt, tested
#
#   scripts/device_check.sh --fetch-wheels   # here, once: fill .device_carry/ (`make device-wheels`)
#   scripts/device_check.sh                  # on the GPU machine (the device tool: carry
#                                            # .device_carry; the README's GPU section)
#   scripts/device_check.sh --cpu-dry-run    # every section on the CPU at tiny sizes, ~2 min;
#                                            # CUDA-only ones SKIP (tests/test_device_check.py)
#   scripts/device_check.sh --sections throughput,syncs    # some sections only
#
# The GPU machine has torch and Lightning but no Hydra, no network and no copy of the data:
# .device_carry/ (git-ignored, about 5 MB) holds hydra-core, omegaconf and antlr4 wheels
# (installed with pip --no-index --no-deps into a temporary folder) and data.tar.gz (SST-2,
# UD-EWT, Tiny Shakespeare from ../shared/data). seqmodels itself runs from src/ (PYTHONPATH).
# Data: $SEQMODELS_DATA_DIR, else ../shared/data, else .device_carry/data.tar.gz, else tiny data
# written here (always tiny data in a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CARRY=.device_carry
SECTIONS=(env cuda_tests throughput syncs deterministic generation ddp resume)
declare -A MODULE=([env]=cli_runs [cuda_tests]=cli_runs [throughput]=throughput [syncs]=checks
                   [deterministic]=checks [generation]=checks [ddp]=cli_runs [resume]=cli_runs)
# Seconds per section on a GPU (465 in all, inside the 8 minutes a device call is planned for)
# and in a CPU dry run (about 100 s in all on 2 idle cores: these limits are against hangs, for a
# busy CI machine). No section starts once TOTAL seconds have passed.
declare -A GPU_BUDGET=([env]=15 [cuda_tests]=45 [throughput]=200 [syncs]=35 [deterministic]=45
                       [generation]=20 [ddp]=60 [resume]=45)
declare -A CPU_BUDGET=([env]=60 [cuda_tests]=90 [throughput]=150 [syncs]=90 [deterministic]=120
                       [generation]=60 [ddp]=120 [resume]=120)
GPU_TOTAL=470
CPU_TOTAL=900

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

DRY=0
FETCH=0
WANTED=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu-dry-run) DRY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    --sections) WANTED=$2; shift ;;
    --list) printf '%s\n' "${SECTIONS[@]}"; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "device_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# -- --fetch-wheels: here, with network --------------------------------------------------------
if [[ $FETCH -eq 1 ]]; then
  set -e
  rm -rf "$CARRY/wheels" && mkdir -p "$CARRY/wheels"
  # The versions this checkout's environment runs (pure-Python packages: one wheel fits all).
  PINS=$("$PYTHON" -c 'from importlib.metadata import version as v
print(" ".join(f"{n}=={v(n)}" for n in ("hydra-core", "omegaconf", "antlr4-python3-runtime")))')
  "$PYTHON" -m pip download --quiet --no-deps -d "$CARRY/wheels" $PINS
  for sdist in "$CARRY"/wheels/*.tar.gz; do  # antlr4 4.9.3 is published as a source tarball
    [[ -e $sdist ]] || continue
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$CARRY/wheels" "$sdist" && rm "$sdist"
  done
  if [[ -d ../shared/data ]]; then
    tar -czf "$CARRY/data.tar.gz" -C ../shared/data sst2 ud_ewt tinyshakespeare
  fi
  ls -l "$CARRY" "$CARRY/wheels"
  echo "device_check: $PINS in $CARRY/wheels; $(du -sh "$CARRY" | cut -f1) to carry. On the GPU:"
  echo "  run(command='OUT=\$OUT bash scripts/device_check.sh', carry=['$CARRY'], timeout_s=540)"
  exit 0
fi

# -- setup ------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
OUT=${OUT:-logs/device_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT" "$WORK/logs" "$WORK/results"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
NOTES=()
if [[ $DRY -eq 1 ]]; then
  MODE="CPU dry run (tiny data and models; CUDA-only sections SKIP; figures mean nothing)"
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  TOTAL=$CPU_TOTAL
else
  MODE="GPU"
  TOTAL=$GPU_TOTAL
fi

if compgen -G "$CARRY/wheels/*.whl" > /dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --target "$WORK/site" "$CARRY"/wheels/*.whl > "$WORK/logs/wheels.log" 2>&1 \
    && export PYTHONPATH="$WORK/site:$PYTHONPATH" \
    && NOTES+=("wheels installed from $CARRY/wheels: $(cd "$CARRY/wheels" && echo *.whl)") \
    || NOTES+=("**installing $CARRY/wheels failed**: $(tail -1 "$WORK/logs/wheels.log")")
elif ! "$PYTHON" -c 'import hydra, omegaconf' 2> /dev/null; then
  NOTES+=("**hydra-core / omegaconf missing and no $CARRY/wheels**: run --fetch-wheels first")
fi

if [[ $DRY -eq 0 ]] && ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'
then
  echo "device_check: $PYTHON's torch sees no CUDA GPU; on a CPU use --cpu-dry-run" >&2
  exit 2
fi

if [[ $DRY -eq 0 && -n "${SEQMODELS_DATA_DIR:-}" ]]; then
  DATA="SEQMODELS_DATA_DIR=$SEQMODELS_DATA_DIR"
elif [[ $DRY -eq 0 && -d ../shared/data ]]; then
  export SEQMODELS_DATA_DIR=$(cd ../shared/data && pwd) DATA="../shared/data"
elif [[ $DRY -eq 0 && -f $CARRY/data.tar.gz ]]; then
  mkdir -p "$WORK/data" && tar -xzf "$CARRY/data.tar.gz" -C "$WORK/data"
  export SEQMODELS_DATA_DIR=$WORK/data DATA="$CARRY/data.tar.gz (real data)"
else
  "$PYTHON" -c 'import sys; from pathlib import Path; from tests.tiny_datasets import \
write_named_datasets as w; w(Path(sys.argv[1]))' "$WORK/data" > "$WORK/logs/data.log" 2>&1 \
    || NOTES+=("**writing tiny data failed**: $(tail -1 "$WORK/logs/data.log")")
  export SEQMODELS_DATA_DIR=$WORK/data DATA="tiny data written by tests/tiny_datasets.py"
fi
NOTES+=("data: $DATA" "python: $PYTHON; work directory: $WORK")
echo "device_check: $MODE; data: $DATA; work: $WORK; summary: $OUT/summary.md"

# -- sections ---------------------------------------------------------------------------------
START=$SECONDS
FAILED=0
: > "$WORK/records.tsv"
for section in "${SECTIONS[@]}"; do
  if [[ -n $WANTED && ",$WANTED," != *",$section,"* ]]; then continue; fi
  if [[ $DRY -eq 1 ]]; then budget=${CPU_BUDGET[$section]}; else budget=${GPU_BUDGET[$section]}; fi
  left=$((TOTAL - (SECONDS - START)))
  (( budget > left )) && budget=$left
  if (( budget < 10 )); then
    echo "no time left of the ${TOTAL} s run" > "$WORK/results/$section.md"
    printf '%s\tSKIP\t0\t%s\t-\n' "$section" "$budget" >> "$WORK/records.tsv"
    echo "== $section: SKIP (no time left)"
    continue
  fi
  dry_flag=()
  [[ $DRY -eq 1 ]] && dry_flag=(--dry-run)
  began=$SECONDS
  timeout -k 10 "$budget" "$PYTHON" "scripts/device_check/${MODULE[$section]}.py" "$section" \
    --work "$WORK" --budget "$budget" "${dry_flag[@]}" > "$WORK/logs/$section.log" 2>&1
  code=$?
  case $code in
    0) status=PASS ;;
    77) status=SKIP ;;
    *) status=FAIL; FAILED=1 ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$section" "$status" "$((SECONDS - began))" "$budget" "$code" \
    >> "$WORK/records.tsv"
  echo "== $section: $status in $((SECONDS - began)) s (budget $budget s, exit $code)"
done

notes=()
for note in "${NOTES[@]}"; do notes+=(--note "$note"); done
"$PYTHON" scripts/device_check/summary.py --work "$WORK" --out "$OUT" --mode "$MODE" \
  "${notes[@]}" || FAILED=1
# Everything the sections printed, with the runs' own logs (not their checkpoints).
(cd "$WORK" && find logs results runs -name '*.log' -o -name '*.md' -o -name '*.json' \
   -o -name '*.csv' 2> /dev/null | tar -czf "$OUT/logs.tar.gz" -T -) || true
echo "device_check: $((SECONDS - START)) s; $OUT/summary.md"
[[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
exit $FAILED
