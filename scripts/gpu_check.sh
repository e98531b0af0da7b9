#!/usr/bin/env bash
# Every GPU measurement of the GPU issue in one device run (under 10 minutes on an H100/H200): the CUDA-only
# tests, `duplex bench gpu` (against kyutai's moshi==0.2.13 when its wheel is carried in .whl/) and the
# per-kernel profile of one 7B frame step (its `--compile` trial takes minutes: run it apart). Logs go to $OUT
# (the device tool's folder) or ./gpu_logs.
# Fetch the reference wheel once on a machine with PyPI (moshi pins an old torch, hence --no-deps):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl moshi==0.2.13
set -u
out="${OUT:-gpu_logs}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$out/device.log"
timeout 150 python3 -m pytest -q -x tests/test_kernels.py tests/test_cuda_graph.py tests/test_frame_graphs.py \
  2>&1 | tee "$out/tests.log" | tail -15
timeout 300 python3 -m cli bench gpu 2>&1 | tee "$out/bench_gpu.log"
timeout 120 python3 -m benchmarks.gpu_profile 2>&1 | tee "$out/profile.log" | tail -40
