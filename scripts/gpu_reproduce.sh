#!/usr/bin/env bash
# The paper's GPU measurements on a host without internet, from the repo root
# of a checkout that holds .bundle/ (made by scripts/offline_bundle.sh):
#
#   bash scripts/gpu_reproduce.sh bench|start|poll
#
# Results go to $OUT (default results/gpu). Stages:
#   bench   the throughput table (the paper's nets, float32 and bfloat16, K=1),
#           the CIFAR nets again with K=100 steps per call and the split on
#           the GPU, and a jax.profiler trace of ResNet-50 bfloat16.
#   start   starts the Table 6 / Fig. 6 runs in the background (setsid), all
#           at once on the one GPU, with K=100 and the split on the GPU.
#   poll    waits until they finish or about 9 minutes pass, then collects
#           progress and, once finished, the table, the figure and each run's
#           records (as one tarball).
# Knobs: BENCH_MODELS (e.g. resnet50,cifar_resnet110) narrows the first
# table; TABLE6_ARGS goes to the launcher (e.g. --seeds=0,1,2,3,4
# --nets=resnet110), TABLE6_FLAGS to every run (e.g. to shorten them);
# TFDS_DATA_DIR is where the data is (default .bundle/tfds).
set -uo pipefail
case "${1:-}" in
  bench|start|poll) ;;
  *)
    echo "usage: bash scripts/gpu_reproduce.sh bench|start|poll" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
DATA=${TFDS_DATA_DIR:-.bundle/tfds}
SITE=${SITE:-/tmp/resnet_jax_site}
mkdir -p "$OUT"
# The bundled wheels go into their own folder, ahead of the image's packages.
if [ ! -f "$SITE/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .bundle/wheels/*.whl || exit 1
  touch "$SITE/.installed"
fi
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import jax, flax, optax, orbax.checkpoint as o, grain, numpy; \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, \
'orbax', o.__version__, 'grain', grain.__version__, 'numpy', numpy.__version__, jax.devices())" \
  | tee "$OUT/versions.txt"

ROOT=/tmp/table6
case "${1:-}" in
  bench)
    B="python3 -m resnet_jax.tools.benchmark --table=paper --steps=20 --warmup=3 --json=$OUT/throughput.jsonl"
    # BENCH_MODELS=resnet50,cifar_resnet110 (say) narrows the first table.
    $B ${BENCH_MODELS:+--models=$BENCH_MODELS} --table_out="$OUT/throughput.md" 2>&1 \
      | grep -v '^[IW][0-9]' | tee "$OUT/bench.log"
    $B --models=cifar_resnet20,cifar_resnet56,cifar_resnet110 --set=steps_per_dispatch=100 \
      --set=input.device_resident=True --steps=5 --table_out="$OUT/throughput_k100.md" \
      2>&1 | grep -v '^[IW][0-9]' | tee -a "$OUT/bench.log"
    python3 -m resnet_jax.tools.benchmark --config=configs/imagenet_r50.py \
      --config.model_options.dtype=bfloat16 --steps=10 --profile_dir=/tmp/profile_r50 \
      2>&1 | grep -v '^[IW][0-9]' | tee -a "$OUT/bench.log"
    tar czf "$OUT/profile_r50.tgz" -C /tmp profile_r50
    ;;
  start)
    mkdir -p "$ROOT"
    # shellcheck disable=SC2086
    setsid nohup python3 -m resnet_jax.tools.cifar_table --root="$ROOT" --data_dir="$DATA" \
      --results="$ROOT/results" ${TABLE6_ARGS:-} -- --config.steps_per_dispatch=100 \
      --config.input.device_resident=True ${TABLE6_FLAGS:-} > "$ROOT/launcher.log" 2>&1 < /dev/null &
    sleep 90  # Long enough to see each run load its data and compile.
    cat "$ROOT/launcher.log" "$ROOT/progress.txt" 2>/dev/null
    tail -n 3 "$ROOT"/*/train.log
    ;;
  poll)
    for _ in $(seq 54); do
      pgrep -f resnet_jax.tools.cifar_table > /dev/null || break
      sleep 10
    done
    cat "$ROOT/progress.txt"
    tail -n 5 "$ROOT/launcher.log"
    cp "$ROOT/progress.txt" "$ROOT/launcher.log" "$OUT/" 2>/dev/null
    if [ -f "$ROOT/results/table6.md" ]; then
      cp "$ROOT/results/table6.md" "$ROOT/results/table6.json" "$ROOT/results/fig6.png" "$OUT/"
      tar czf "$OUT/table6_runs.tgz" -C "$ROOT" results
    fi
    ;;
  *)
    echo "usage: bash scripts/gpu_reproduce.sh bench|start|poll" >&2
    exit 2
    ;;
esac
