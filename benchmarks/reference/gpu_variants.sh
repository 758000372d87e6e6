#!/usr/bin/env bash
# Second device call: two recipes (crop 128 x batch 8, crop 256 x batch 4), each as CycleGAN and
# supervised, trained side by side on one GPU for a fixed number of steps; the recipe kept is
# chosen on the validation set (seed 103), never on the test set. Writes to $OUT.
set -u
STEPS=${1:-3500}
LIMIT=${2:-360}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
W=/tmp/ref
(timeout 300 python3 -m pytest tests/gpu/test_frozen_and_training_gpu.py -v -s -p no:cacheprovider \
  > "$OUT/gpu_tests.log" 2>&1; echo "pytest rc=$?" >> "$OUT/gpu_tests.log") &
TESTS=$!
python3 benchmarks/reference_models.py data --root $W > "$OUT/run.log" 2>&1 || { cat "$OUT/run.log"; exit 1; }
RUNS=""
for m in cyclegan supervised; do
  timeout $LIMIT python3 benchmarks/reference_models.py train --root $W --which $m --steps $STEPS \
    --device cuda --out ${m}_c128 > "$OUT/train_${m}_c128.log" 2>&1 &
  RUNS="$RUNS $!"
  timeout $LIMIT python3 benchmarks/reference_models.py train --root $W --which $m --steps $STEPS \
    --device cuda --out ${m}_c256 --crop 256 --batch-size 4 > "$OUT/train_${m}_c256.log" 2>&1 &
  RUNS="$RUNS $!"
done
for p in $RUNS; do wait "$p"; done
(cd $W && tar -czf "$OUT/runs.tar.gz" $(ls */model.json */generator_ab.pt */train_config.yaml \
  */train_log.csv */reference_run.json 2>/dev/null | grep -v '^probe'))
wait $TESTS
tail -4 "$OUT/gpu_tests.log"
grep -h "model folder\|psnr:" "$OUT"/train_*.log
ls -la "$OUT"
