#!/usr/bin/env bash
# One device-machine call (GPU lent to the session): train both reference models on CUDA for a
# fixed step budget sized by a 30-step probe, while the gpu-marked tests run beside them.
# Run from the repo root with the pydantic wheels in .whl/ (see /work/.library/device/README.md);
# writes to $OUT. Usage: bash benchmarks/reference/gpu_run.sh [train_seconds]
set -u
BUDGET=${1:-270}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
W=/tmp/ref
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  python3 -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda)"; } \
  > "$OUT/machine.txt" 2>&1
(timeout 420 python3 -m pytest tests/gpu -m "gpu and not tensorrt" -v -s -p no:cacheprovider \
  > "$OUT/gpu_tests.log" 2>&1; echo "pytest rc=$?" >> "$OUT/gpu_tests.log") &
TESTS=$!
python3 benchmarks/reference_models.py data --root $W > "$OUT/run.log" 2>&1 || { cat "$OUT/run.log"; exit 1; }
mkdir -p $W/probe && ln -sfn $W/data $W/probe/data
for m in cyclegan supervised; do
  python3 benchmarks/reference_models.py train --root $W/probe --which $m --steps 30 --device cuda \
    >> "$OUT/run.log" 2>&1 &
  PIDS="${PIDS:-} $!"
done
for p in $PIDS; do wait "$p"; done
STEPS=$(python3 - <<PY
import csv
rows = [r for r in csv.DictReader(open("$W/probe/cyclegan/train_log.csv")) if r["step"] == "30"]
s = float(rows[0]["seconds"]) / 30
print(max(1000, min(40000, int($BUDGET / s) // 500 * 500)))
PY
)
[ -n "$STEPS" ] || { tail -30 "$OUT/run.log"; wait $TESTS; exit 1; }
echo "probe: steps=$STEPS for ${BUDGET}s" | tee -a "$OUT/run.log"
for m in cyclegan supervised; do
  python3 benchmarks/reference_models.py train --root $W --which $m --steps "$STEPS" --device cuda \
    > "$OUT/train_$m.log" 2>&1 &
  RUNS="${RUNS:-} $!"
done
for p in $RUNS; do wait "$p"; done
for m in cyclegan supervised; do
  (cd $W && tar -czf "$OUT/$m.tar.gz" $(ls $m/model.json $m/generator_*.pt $m/train_config.yaml \
    $m/train_log.csv $m/reference_run.json)) 2>>"$OUT/run.log"
done
wait $TESTS
tail -5 "$OUT/gpu_tests.log"
ls -la "$OUT"
