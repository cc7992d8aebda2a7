#!/usr/bin/env bash
# GPU check: on a CUDA machine, train each task for a few hundred steps on one GPU in fp32 and
# bf16-mixed, then on every GPU of the machine with DDP; report real tokens per second, peak GPU
# memory and which RNN kernels ran (cuDNN's aten::_cudnn_rnn is the fast path). The table it
# prints goes into docs/benchmarks.md with the GPU model. Without a GPU it stops at once (exit 2).
#
#   scripts/gpu_check.sh [STEPS]         # default 300 steps per run; ~10 runs
#   OUT=/tmp/check PYTHON=python scripts/gpu_check.sh 500
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
STEPS=${1:-300}
OUT=${OUT:-logs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
if [[ -z "${SEQMODELS_DATA_DIR:-}" && -d ../shared/data ]]; then
  export SEQMODELS_DATA_DIR=$(cd ../shared/data && pwd)
fi

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [[ "$GPUS" -eq 0 ]]; then
  echo "gpu_check: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees no CUDA" \
       "GPU on this machine; nothing to measure" >&2
  exit 2
fi
BF16=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_bf16_supported()))')
echo "gpu_check: $GPUS x $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name())')," \
     "$STEPS steps per run, outputs in $OUT"

run() {  # run NAME EXPERIMENT [OVERRIDES...]: one short training run, timed by the callback
  local name=$1 experiment=$2
  shift 2
  echo "== $name"
  "$PYTHON" -m seqmodels.train "experiment=$experiment" "trainer.max_steps=$STEPS" \
    trainer.max_epochs=-1 test=false callbacks=none logger=csv \
    "++trainer.limit_val_batches=0" "++trainer.num_sanity_val_steps=0" \
    "++callbacks.throughput._target_=seqmodels.throughput.Throughput" \
    "++callbacks.throughput.output_dir=\${paths.output_dir}" \
    data.pin_memory=true "hydra.run.dir=$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "   failed: see $OUT/$name.log" >&2; tail -5 "$OUT/$name.log" >&2; return 1; }
  grep -h "throughput:" "$OUT/$name.log" | sed 's/^.*throughput:/  /'
}

mkdir -p "$OUT"
for experiment in sst2_bilstm ewt_upos shakespeare_char; do
  run "$experiment-fp32" "$experiment" trainer=gpu trainer.precision=32-true
  if [[ "$BF16" -eq 1 ]]; then
    run "$experiment-bf16" "$experiment" trainer=gpu trainer.precision=bf16-mixed
  fi
  # The DDP path on the GPUs present (with one GPU: DDP's code path on one process).
  run "$experiment-ddp$GPUS" "$experiment" trainer=ddp trainer.precision=32-true
done

"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

rows = []
for path in sorted(Path(sys.argv[1]).glob("*/throughput.json")):
    r = json.loads(path.read_text())
    cudnn = "yes" if "aten::_cudnn_rnn" in r["rnn_kernels"] else f"NO {r['rnn_kernels']}"
    rows.append(f"| {path.parent.name} | {r['device']} | {r['precision']} | {r['world_size']} "
                f"| {r['tokens_per_second']:,.0f} | {r['peak_memory_mib']:,.0f} | {cudnn} |")
table = "\n".join(["| run | GPU | precision | GPUs | tokens/s | peak MiB | cuDNN RNN |",
                   "| --- | --- | --- | ---: | ---: | ---: | --- |", *rows])
(Path(sys.argv[1]) / "summary.md").write_text(table + "\n")
print(table)
EOF
