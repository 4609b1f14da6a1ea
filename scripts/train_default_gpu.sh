#!/usr/bin/env bash
# Recipe sweep for the built-in default model on one GPU host: builds a larger scene pool with
# every core, trains four recipes side by side on the one GPU (each under the wall clock), scores
# each on held-out scenes and packs each run (fp16, no optimiser) into OUT_DIR/<recipe>/ so that
# `python -m export.train_default finish --run-dir OUT_DIR/<recipe>` can package the best one here.
#
#   bash scripts/train_default_gpu.sh OUT_DIR [TRAIN_MINUTES] [POOL_SCENES]
#
# Environment: PYTHON (default python3), POOL_DIR (default /tmp/magicbokeh_pool), RECIPES (names,
# default "default lr1e3 t100 random_vae"), EVAL_SCENES (default 8), BATCH (16), CROP (192), POOL_SIZE (256).
set -euo pipefail
out=${1:?usage: train_default_gpu.sh OUT_DIR [TRAIN_MINUTES] [POOL_SCENES]}
minutes=${2:-5.5}
scenes=${3:-2400}
py=${PYTHON:-python3}
pool_dir=${POOL_DIR:-/tmp/magicbokeh_pool}
runs=${RUNS_DIR:-/tmp/magicbokeh_runs}
recipes=${RECIPES:-"default lr1e3 t100 random_vae"}
cores=$(nproc)
pool_args=(--pool-dir "$pool_dir" --pool-scenes "$scenes" --pool-size "${POOL_SIZE:-256}" --pool-shard-scenes $(( (scenes + cores - 1) / cores )))

recipe_args() {
  case "$1" in
    default) echo "--lr 5e-4 --vae-lr-scale 0.5" ;;
    lr1e3) echo "--lr 1e-3 --vae-lr-scale 0.5" ;;
    t100) echo "--set timestep=100 --lr 5e-4 --vae-lr-scale 0.5" ;;
    random_vae) echo "--vae-init random --lr 5e-4" ;;
    *) echo "unknown recipe $1" >&2; exit 2 ;;
  esac
}

start=$(date +%s)
"$py" -m export.train_default pool "${pool_args[@]}" --pool-workers "$cores"
echo "pool ready after $(( $(date +%s) - start )) s"

n=$(echo $recipes | wc -w)
workers=$(( (cores - n) / n )); (( workers < 1 )) && workers=1
pids=()
for r in $recipes; do
  "$py" -m export.train_default train --run-dir "$runs/$r" "${pool_args[@]}" $(recipe_args "$r") \
    --crop "${CROP:-192}" --batch-size "${BATCH:-16}" --schedule time --max-minutes "$minutes" \
    --autoencoder-fraction 0.3 --total-steps 1000000 --num-workers "$workers" --threads 1 \
    --checkpoint-every 1000 --restart > "$runs.$r.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for r in $recipes; do echo "== $r"; grep -v '^{' "$runs.$r.log" | tail -3; grep '^{' "$runs.$r.log" | tail -1; done
echo "training done after $(( $(date +%s) - start )) s"
(( status == 0 )) || { echo "a training run failed"; exit 1; }

pids=()
for r in $recipes; do
  "$py" -m export.train_default evaluate --run-dir "$runs/$r" --scenes "${EVAL_SCENES:-8}" --threads $(( cores / n )) > "$runs.$r.eval" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
for r in $recipes; do
  echo "== eval $r"; tail -1 "$runs.$r.eval" | cut -c1-1500
  "$py" -m export.train_default pack --run-dir "$runs/$r" --out "$out/$r" > /dev/null 2>&1
done
echo "all done after $(( $(date +%s) - start )) s"
exit $status
