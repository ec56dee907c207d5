#!/usr/bin/env bash
# Create (or reuse) .venv in the repo root and install the pinned OpenMMLab stack plus mmgfp.
#
# mmcv 2.1.0 has no wheel for torch 2.14 / Python 3.11, so it is built from its sdist with ops.
# torch 2.14's headers need C++20 while mmcv's setup.py asks for C++17: the flag is patched.
# The built wheel is kept under $MMGFP_CACHE (default: mmgfp-wheels in pip's cache), keyed by the
# versions,
# so a second setup on the same machine takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
# Default: a folder inside pip's own cache, so a machine that keeps pip's cache keeps the wheel.
PIP_CACHE="$("$PYTHON" -m pip cache dir 2>/dev/null || true)"
CACHE="${MMGFP_CACHE:-${PIP_CACHE:-$HOME/.cache/pip}/mmgfp-wheels}"
PYTAG="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE/mmcv-${MMCV_VERSION}_torch-${TORCH_VERSION}_${PYTAG}"

log() { printf '[setup_env] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

# Pin torch for every later install: an unpinned resolve would pull a multi-GB download.
CONSTRAINTS="$VENV/mmgfp-constraints.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"

log "installing torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION and build tools"
pip install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" 'setuptools<80' wheel ninja numpy

build_mmcv() {
  local work
  work="$(mktemp -d)"
  log "building mmcv $MMCV_VERSION with ops from its sdist (about 9 minutes on 2 cores)"
  pip download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work"
  tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
  sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
  mkdir -p "$WHEEL_DIR"
  (cd "$work/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" \
     pip wheel -q --no-deps --no-build-isolation . -w "$work/dist")
  # Move into the cache only once complete, so an interrupted build never leaves a broken wheel.
  mv "$work"/dist/mmcv-*.whl "$WHEEL_DIR/"
  rm -rf "$work"
}

if ! python -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    build_mmcv
  else
    log "reusing cached mmcv wheel from $WHEEL_DIR"
  fi
  MMCV_WHEEL="$(ls "$WHEEL_DIR"/mmcv-*.whl | head -n 1)"
else
  MMCV_WHEEL="mmcv==$MMCV_VERSION"
fi

log "installing mmengine, mmcv, mmdet, mmpretrain and mmgfp"
pip install -q "mmengine==0.10.7" "$MMCV_WHEEL" "mmdet==3.3.0" "mmpretrain==1.2.0"
# the tests extra brings the optional codebases the tests cover (mmsegmentation: setup.py SEG)
pip install -q -e "$ROOT[tests,docs]"
# MMPose (extra `pose`). xtcocotools' wheels are built against another numpy ABI ("numpy.dtype
# size changed" at import), so it is built from its sdist first; its setup.py imports numpy and
# Cython, hence no build isolation. pip then finds it satisfied when it installs mmpose.
pip install -q cython
pip install -q --no-build-isolation --no-binary xtcocotools "xtcocotools==1.14.3"
pip install -q -e "$ROOT[pose]"
python -c "import mmpose.apis, xtcocotools.mask; print('[setup_env] mmpose', mmpose.__version__)"
# MMDeploy for tests/export/test_mmdeploy.py. --no-deps: its metadata pins protobuf<=3.20.2, which
# would downgrade onnx/onnxruntime; what it imports comes with the tests extra (setup.py).
pip install -q --no-deps "mmdeploy==1.3.1" || log "mmdeploy 1.3.1 not installed (its wheel is" \
  "for x86-64 Linux only): tests/export/test_mmdeploy.py will be skipped"
# MMYOLO for tests/apis/test_mmyolo.py and tests/hooks/test_hook_yolo.py (the `yolo` extra)
pip install -q "mmyolo==0.6.0"
# NVIDIA ModelOpt 0.47 (FastNAS) for the `modelopt` variant of benchmarks/latency.py, kept OUT of
# the venv: `--target .venv/modelopt --no-deps` with the pins of requirements/modelopt.txt (~15 s),
# so its dependencies cannot change the venv; the benchmark appends that folder to sys.path.
if ! PYTHONPATH="$VENV/modelopt" python -c "import modelopt.torch.prune, torchprofile.profile as p; assert hasattr(p, 'handlers')" 2>/dev/null; then
  rm -rf "$VENV/modelopt.partial"
  if pip install -q --no-deps --target "$VENV/modelopt.partial" -r "$ROOT/requirements/modelopt.txt"; then
    rm -rf "$VENV/modelopt" && mv "$VENV/modelopt.partial" "$VENV/modelopt"
  else
    log "ModelOpt not installed: the modelopt variant of benchmarks/latency.py and its test skip"
  fi
fi
python -c "import torch, mmcv.ops, mmengine, mmdet, mmpretrain, mmseg, mmgfp; print('[setup_env] ok: torch', torch.__version__, 'mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmpretrain', mmpretrain.__version__, 'mmseg', mmseg.__version__, 'mmgfp', mmgfp.__version__)"
