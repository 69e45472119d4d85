#!/usr/bin/env bash
# The prepared GPU check of issue 29 (docs/gpu.md): bench row 7, MAPPA steps at train.py's defaults
# on random-weight Qwen2.5-1.5B and -7B shapes, 4-bit, 3 adapters + the coach, torch's allocator
# capped at 24 GiB: reserved memory per phase, the CUDA context, seconds per step.
#
#   bash bench/gpu_check.sh prep     # HERE, once: packs the packages the GPU machine lacks into .gpu/
#   bash bench/gpu_check.sh          # THERE (device tool: command "bash bench/gpu_check.sh",
#                                    #   carry [".gpu"], timeout_s 420); results land in $OUT
#   STEPS=1 bash bench/gpu_check.sh  # the rerun, if the first try hit its time limit
#
# Estimated (docs/gpu.md): ~4.5 min on an H100 for 2 steps of each size, ~6 min of device time with
# the machine's start; each size's result is logged as soon as it is measured.
#
# Why a pack: the GPU image has no bitsandbytes, and its transformers (5.17) predates the `cache=`
# argument rollout.py passes; nothing can be downloaded there. The pack is this machine's installed
# transformers, peft and bitsandbytes (pure Python + bitsandbytes' CUDA 13 kernels only: the whole
# wheel with every CUDA version would push the working tree past the tool's 64 MiB).
set -uo pipefail
cd "$(dirname "$0")/.."

prep() {
    local site
    site=$(python3 -c "import os, transformers; print(os.path.dirname(os.path.dirname(transformers.__file__)))") || exit 2
    mkdir -p .gpu  # ignored (.gitignore): it travels only where `carry` names it
    (cd "$site" && tar -czf - --exclude=__pycache__ --exclude='libbitsandbytes_cuda1[12]*.so' \
        --exclude='libbitsandbytes_rocm*' --exclude='libbitsandbytes_xpu*' \
        transformers transformers-*.dist-info peft peft-*.dist-info bitsandbytes bitsandbytes-*.dist-info) >.gpu/site.tar.gz || exit 2
    echo "packed $(du -h .gpu/site.tar.gz | cut -f1) into .gpu/site.tar.gz; working tree + pack must stay under 64 MiB"
}

check() {
    local out=${OUT:-/tmp/gpu-check}
    mkdir -p "$out" /tmp/site
    if [ -f .gpu/site.tar.gz ]; then
        tar -xzf .gpu/site.tar.gz -C /tmp/site && export PYTHONPATH=/tmp/site
    fi
    python3 -c "import bitsandbytes, transformers, peft; print('transformers', transformers.__version__, 'peft', \
peft.__version__, 'bitsandbytes', bitsandbytes.__version__)" 2>&1 | grep -v kernels | tee "$out/versions.txt"
    python3 -c "import bitsandbytes" 2>/dev/null || { echo "error: no bitsandbytes: run 'bash bench/gpu_check.sh prep' here first and carry .gpu"; exit 2; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/versions.txt"
    export PYTHONUNBUFFERED=1
    # 2 steps per size; a timeout still leaves the finished size's numbers in gpu-check.log
    timeout 400 python3 -m bench --gpu-check --steps "${STEPS:-2}" --json "$out/gpu-check.json" 2>&1 \
        | grep -v "kernels-community" | tee "$out/gpu-check.log"
}

case "${1:-check}" in
    prep) prep ;;
    check) check ;;
    *) echo "usage: bash bench/gpu_check.sh [prep|check]"; exit 2 ;;
esac
