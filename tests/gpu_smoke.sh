#!/usr/bin/env bash
# GPU smoke: every entry point as a user types it, on one GPU, in a few minutes (`make test-gpu`).
#
#   bash tests/gpu_smoke.sh [WORK_DIR]   (PY=python: another interpreter than the venv's; SMOKE_DIR: the work dir;
#                                         SMOKE_STEPS="vision-eager glue": only the steps named;
#                                         SMOKE_PARALLEL=1: four independent groups of steps at once, one GPU)
#
# Each step prints one line, "ok  NAME (Ns)" or "FAIL NAME: <its last output line>" (the whole output is in
# WORK_DIR/NAME.log); the run ends with a summary line and exits non-zero if any step failed. Steps:
# the vision trainer on the embedded Fashion-MNIST subset with the default device (eager, --compile, torchrun and
# torch.distributed.launch with one process), --eval of its checkpoint in the RNN and chunk forms, Composer
# pretraining of the demo BERT and GLUE finetuning from it (fused kernels, amp_bf16), the published-checkpoint
# converter on that checkpoint (and the converted model's forward on the GPU in every form), and `pytest -m triton`.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
bindir=$(dirname "$(command -v "$PY")")
tool() { [ -x "$bindir/$1" ] && echo "$bindir/$1" || echo "$1"; }  # the venv's launcher, else the one on PATH
COMPOSER=$(tool composer)
TORCHRUN=$(tool torchrun)
work=${1:-${SMOKE_DIR:-$(mktemp -d -t lion-gpu-smoke.XXXXXX)}}
mkdir -p "$work"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast off

"$PY" - <<'EOF' || { echo "FAIL setup: no CUDA device for $PY"; exit 1; }
import datetime, os, subprocess, torch, triton
assert torch.cuda.is_available(), "CUDA is not available"
commit = os.environ.get("SMOKE_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                          text=True).stdout.strip()
print(f"gpu smoke {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · {torch.cuda.get_device_name()} · "
      f"torch {torch.__version__} · triton {triton.__version__} · commit {commit or '?'}")
EOF

# SMOKE_PARALLEL=1: the steps in four groups that share nothing but the GPU, run at once (each group in order, in
# its own work dir); one line per step as always, then the summary.
if [ "${SMOKE_PARALLEL:-0}" = 1 ] && [ -z "${SMOKE_STEPS:-}" ]; then
    groups=("vision-eager vision-eval-RNN vision-eval-Chunk vision-compile" "vision-torchrun vision-dist-launch"
            "mlm-pretrain glue converter" "pytest-triton")
    pids=()
    for i in "${!groups[@]}"; do
        SMOKE_PARALLEL=0 SMOKE_STEPS="${groups[$i]}" bash "$0" "$work/group$i" > "$work/group$i.out" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    lines=$(cat "$work"/group*.out | grep -E '^(ok  |FAIL)')
    echo "$lines"
    if grep -q '^FAIL' <<< "$lines"; then
        echo "gpu smoke: $(grep -c '^FAIL' <<< "$lines") failed (logs in $work/group*)"
        exit 1
    fi
    echo "gpu smoke: all steps passed, in four parallel groups (logs in $work/group*)"
    exit 0
fi

failed=()
step() {  # step NAME COMMAND...: run, print one line (SMOKE_STEPS="NAME ...": only those steps)
    local name=$1 start=$SECONDS; shift
    if [ -n "${SMOKE_STEPS:-}" ] && [[ " $SMOKE_STEPS " != *" $name "* ]]; then return; fi
    if "$@" > "$work/$name.log" 2>&1; then
        printf 'ok   %-22s (%ds)\n' "$name" $((SECONDS - start))
    else
        printf 'FAIL %-22s (%ds): %s\n' "$name" $((SECONDS - start)) "$(grep -v '^\s*$' "$work/$name.log" | tail -n 1)"
        failed+=("$name")
    fi
}

# Vision: the demo's tiny LION-D on the embedded data, one epoch, default --device (cuda), bf16 autocast.
vision=(image_classification/main_lion.py --model lion_tiny_patch16_224 --model-kwargs patch_size=7 depth=2
        embed_dim=96 num_heads=3 --input-size 28 --mask_type Decay --epochs 1 --batch-size 128 --lr 1e-3
        --unscale-lr --warmup-epochs 0 --no-aug --mixup 0 --cutmix 0 --no-model-ema --drop-path 0 --num_workers 2
        --print-freq 100 --data-set FMNIST_MINI --data-path "$work/fmnist_mini")
step vision-eager "$PY" "${vision[@]}" --output_dir "$work/vision-eager"
step vision-compile "$PY" "${vision[@]}" --compile --output_dir "$work/vision-compile"
step vision-torchrun "$TORCHRUN" --standalone --nproc_per_node=1 "${vision[@]}" --output_dir "$work/vision-torchrun"
step vision-dist-launch "$PY" -m torch.distributed.launch --nproc_per_node=1 --use_env "${vision[@]}" \
    --output_dir "$work/vision-launch"
for form in RNN Chunk; do
    step "vision-eval-$form" "$PY" "${vision[@]}" --eval --resume "$work/vision-eager/checkpoint.pth" --format "$form"
done

# MLM: the demo pretraining through Composer's launcher, then GLUE from its checkpoint, both amp_bf16.
ckpt=$work/pretrain/demo/latest-rank0.pt
step mlm-pretrain "$COMPOSER" mlm/main.py yamls/pretrain/demo.yaml precision=amp_bf16 max_duration=60ba \
    eval_interval=30ba save_interval=30ba "save_folder=$work/pretrain/demo" "data_local=$work/demo-corpus-64"
step glue "$PY" mlm/glue.py yamls/finetune-glue/demo.yaml precision=amp_bf16 "starting_checkpoint_load_path=$ckpt" \
    "local_pretrain_checkpoint_folder=$work/pretrain" "save_finetune_checkpoint_prefix=$work/finetune" \
    "data.cache_dir=$work/glue-cache"

# The published-checkpoint converter on the Composer checkpoint, and the converted model on the GPU in every form.
convert_and_run() {
    "$PY" -m mlm.src.checkpoint_loading "$ckpt" "$work/converted" --overwrite && "$PY" - "$work/converted" <<'EOF'
import sys, torch
from mlm.src.bert_layers import LionBertForMaskedLM
model = LionBertForMaskedLM.from_pretrained(sys.argv[1]).cuda().eval()
ids = torch.randint(1000, 2000, (2, 61), device="cuda")
mask = torch.ones_like(ids)
mask[1, 50:] = 0
outs = {}
for form in ("parallel", "rnn", "chunk"):
    model.set_form(form)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        outs[form] = model(input_ids=ids, attention_mask=mask).logits.float()
for form in ("rnn", "chunk"):
    err = ((outs[form] - outs["parallel"])[mask.bool()].norm() / outs["parallel"][mask.bool()].norm()).item()
    assert err < 2e-2, f"{form} form differs from parallel: relative error {err:.2e}"
print("converted model: parallel, rnn and chunk forms agree on the GPU")
EOF
}
step converter convert_and_run

# Each test file with GPU tests, one after another, its tests spread over processes where pytest-xdist is installed
# (mostly Triton compilation on the CPU); prints each file's wall time, which must stay under 2 minutes.
triton_tests() {
    local xdist files file start log secs rc=0 slow=()
    xdist=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 8")
    files=$("$PY" -m pytest --collect-only -q -m triton -p no:cacheprovider tests | grep -o '^tests/[^:]*' | sort -u)
    [ -n "$files" ] || { echo "no GPU tests collected"; return 1; }
    for file in $files; do
        start=$SECONDS log="$work/$(basename "$file" .py).log"
        # shellcheck disable=SC2086  # xdist: zero or two words
        "$PY" -m pytest -q -m triton -p no:cacheprovider $xdist "$file" > "$log" 2>&1 || rc=1
        tail -n 1 "$log"
        secs=$((SECONDS - start))
        echo "$file: $secs s"
        [ "$secs" -le 120 ] || slow+=("$file")
    done
    [ ${#slow[@]} -eq 0 ] || { echo "test files over 2 minutes: ${slow[*]}"; rc=1; }
    return $rc
}
step pytest-triton triton_tests

total=$((${#failed[@]}))
if [ "$total" -eq 0 ]; then
    echo "gpu smoke: all steps passed (logs in $work)"
else
    echo "gpu smoke: $total failed: ${failed[*]} (logs in $work)"
    exit 1
fi
