#!/usr/bin/env bash
# The small-scale studies of experiments/README.md, as run on one 4-GPU H200 machine (about 8 minutes each):
#   bash experiments/run_gpu_study.sh WORK_DIR [FASHION_MNIST_DIR]
#       GPU 0, 1: the vision study (six variants, 20 epochs), seed 0 and seed 1;
#       GPU 2, 3: the MLM study (BERT + LION-Lit, LION-D + LION-S: 1500 steps at lr 1e-3, then the fixture tasks);
#   STUDIES=mlm MLM_STEPS=3000 MLM_LR=5e-4 bash experiments/run_gpu_study.sh WORK_DIR
#       the MLM study alone, one model per GPU (here: the lower-learning-rate, longer recipe);
# then one table per study (--merge) and the MLM step timing of all four models, interleaved on one GPU.
# Vision time ratios compare runs of one process on one GPU; MLM pretraining times come from identical GPUs.
# With fewer than four GPUs the jobs share GPUs (the timings are then not clean; run the commands one by one).
set -u
work=${1:?usage: run_gpu_study.sh WORK_DIR [FASHION_MNIST_DIR]}
data=${2:-/usr/share/datasets/fashion-mnist}
studies=${STUDIES:-vision mlm}
mkdir -p "$work"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")" && pwd)
gpus=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')

vision=(--data-path "$data" --epochs 20 --warmup-epochs 1 --extra-seed-variants --calib-steps 10 --warmup-steps 3
        --depth 4 --dim 128 --heads 4 --batch-size 512)
steps=${MLM_STEPS:-1500}
mlm=(--steps "$steps" --eval-every $((steps / 10)) --batch-size 64 --seq-len 128 --hidden 256 --layers 4 --heads 4
     --lr "${MLM_LR:-1e-3}" --glue-tasks rt_sentiment moby_sentence_order sotu_next_sentence moby_sentence_distance
     --glue-duration 3ep --glue-seq-len 128)

gpu=0
launch() {  # launch NAME SCRIPT ARGS...: one job on the next GPU, output in WORK_DIR/NAME.log
    local name=$1; shift
    CUDA_VISIBLE_DEVICES=$((gpu % gpus)) python3 "$@" > "$work/$name.log" 2>&1 &
    gpu=$((gpu + 1))
}
mlm_parts=()
if [[ $studies == *vision* ]]; then
    for seed in 0 1; do
        launch "v$seed" "$here/vision_fmnist.py" "${vision[@]}" --seeds $seed --out "$work/v$seed"
    done
    groups=("BERT LION-Lit" "LION-D LION-S")
else
    groups=(BERT LION-Lit LION-D LION-S)
fi
if [[ $studies == *mlm* ]]; then
    for i in "${!groups[@]}"; do
        # shellcheck disable=SC2086  # a group is a list of model names
        launch "m$i" "$here/mlm_small.py" "${mlm[@]}" --archs ${groups[$i]} --step-rounds 0 --out "$work/m$i" \
            --work-dir "$work/mlm-work-$i"
        mlm_parts+=("$work/m$i")
    done
fi
wait

if [[ $studies == *vision* ]]; then
    CUDA_VISIBLE_DEVICES=0 python3 "$here/vision_fmnist.py" "${vision[@]}" --seeds 0 1 --merge "$work/v0" "$work/v1" \
        --out "$work/vision" > "$work/vision.log" 2>&1
fi
if [[ $studies == *mlm* ]]; then
    CUDA_VISIBLE_DEVICES=0 python3 "$here/mlm_small.py" "${mlm[@]}" --merge "${mlm_parts[@]}" --step-rounds 8 \
        --out "$work/mlm" --work-dir "$work/mlm-work-all" > "$work/mlm.log" 2>&1
fi
tail -n 8 "$work"/*.log
