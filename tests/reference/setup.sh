#!/usr/bin/env bash
# Prepares the real reference implementations for tests/reference, OUTSIDE this repository:
#   tests/reference/setup.sh SOURCE_DIR
# SOURCE_DIR holds the source trees you fetched yourself:
#   SOURCE_DIR/detectron2  a facebookresearch/detectron2 checkout: its CPU extension is built
#                          into the current Python environment (pip install -e, against the
#                          installed torch; no CUDA build)
#   SOURCE_DIR/yolact      a dbolya/yolact checkout (pure Python + torch): copied to
#                          SOURCE_DIR/yolact_cpu with the shims today's torch on a CPU needs
# Then run:  KMR_REFERENCE_DIR=SOURCE_DIR python -m pytest -m reference tests/reference -s
set -euo pipefail
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 SOURCE_DIR (holding detectron2/ and yolact/ source trees)" >&2
  exit 2
fi
SRC=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/../.." && pwd)
case "$SRC/" in
  "$REPO"/*) echo "SOURCE_DIR must be outside this repository ($REPO)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python}
"$PY" -m pip install opencv-python-headless  # YOLACT's sources import cv2

BUILT=$(cd / && "$PY" -c "import os, detectron2, detectron2._C; print(os.path.dirname(
    os.path.dirname(os.path.abspath(detectron2.__file__))))" 2>/dev/null || true)
if [ -d "$SRC/detectron2" ] && [ "$BUILT" = "$SRC/detectron2" ]; then
  echo "detectron2 already built from $SRC/detectron2"
elif [ -d "$SRC/detectron2" ]; then
  echo "building detectron2 (CPU extension) from $SRC/detectron2 ..."
  (cd "$SRC/detectron2" && FORCE_CUDA=0 "$PY" -m pip install --no-build-isolation -e .)
  (cd / && "$PY" -c "import detectron2._C; print('detectron2 ready')")
else
  echo "no $SRC/detectron2: the detectron2 reference tests will skip" >&2
fi

if [ -d "$SRC/yolact" ]; then
  rm -rf "$SRC/yolact_cpu"
  cp -r "$SRC/yolact" "$SRC/yolact_cpu"
  cd "$SRC/yolact_cpu"
  # 1. no CUDA: yolact.py initialises CUDA at import and moves tensors with .cuda()
  sed -i 's/^torch\.cuda\.current_device()/# (CPU) torch.cuda.current_device()/' yolact.py
  grep -rl --include=*.py '\.cuda()' . | xargs sed -i 's/\.cuda()/.cpu()/g'
  sed -i "s/torch\.set_default_tensor_type('torch\.cuda\.FloatTensor')/pass/" eval.py
  # 2. TorchScript: the ScriptModule wrappers are plain nn.Module (today's torch.jit rejects
  #    the old script_method code); the computation is the same Python
  sed -i 's/^use_jit = .*/use_jit = False/' yolact.py
  # 3. torch >= 2.6 loads with weights_only=True by default: the reference's own .pth files
  #    (plain state_dicts) load as before with weights_only=False
  sed -i 's/torch\.load(path)/torch.load(path, map_location="cpu", weights_only=False)/' yolact.py
  "$PY" - <<'PYEOF'
import sys
sys.path.insert(0, ".")
from data import set_cfg
set_cfg("yolact_resnet50_config")
from yolact import Yolact
Yolact()
print("YOLACT reference ready:", __import__("os").getcwd())
PYEOF
else
  echo "no $SRC/yolact: the YOLACT reference tests will skip" >&2
fi
echo "export KMR_REFERENCE_DIR=$SRC"
