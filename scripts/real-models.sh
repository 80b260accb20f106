#!/usr/bin/env bash
# Idempotent: ONNX files of real architectures in the forms users bring them, under
# .cache/real-models/ (not committed):
#   keras/  Keras applications (random weights) through tf2onnx at opsets 13 and 17
#   torch/  small CNNs through torch.onnx.export, TorchScript path (opsets 9-17, static and
#           dynamic batch, computed "same" padding, local functions) and dynamo path (opset 18)
#   zoo/    reconstructions of the ONNX Model Zoo's classic ImageNet classifiers (opsets 7-9)
# Each folder has a manifest.json. The exporters live in their own virtual environments so the
# project's environment (.venv) is never touched:
#   .cache/tf-venv     tensorflow-cpu + tf2onnx
#   .cache/torch-venv  torch (the same exact pin as the project) + onnxscript for the dynamo path
# Usage: scripts/real-models.sh [--inspect] [keras] [torch] [zoo]   (default: all three parts)
#   --inspect  also run `.venv/bin/mirrornet inspect` on every file; outcomes go to
#              .cache/real-models/inspect.{tsv,json} (refusals are recorded, not fatal)
# A second run with everything in place does no network work and rewrites no file.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${MIRRORNET_REAL_MODELS:-$ROOT/.cache/real-models}"
TF_VENV="$ROOT/.cache/tf-venv"
TORCH_VENV="$ROOT/.cache/torch-venv"
PROJECT_PY="${MIRRORNET_VENV:-$ROOT/.venv}/bin/python"
PY="${PYTHON:-python3}"
say() { printf '[real-models] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Versions measured to work together here (Python 3.11): tf2onnx 1.17.0 converts Keras 3 models
# of tensorflow-cpu 2.21.0 with numpy 2.4, protobuf 7 and onnx 1.23 (no older pins needed).
TF_PKGS=(tensorflow-cpu==2.21.0 keras==3.15.1 tf2onnx==1.17.0 onnx==1.23.2 onnxruntime==1.32.0
         numpy==2.4.6 protobuf==7.36.2)
# torch must stay at the project's exact pin (a looser one resolves to a multi-GB CUDA build).
TORCH_PKGS=(torch==2.13.0 onnxscript==0.7.2 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6)

export OMP_NUM_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
export CUDA_VISIBLE_DEVICES=""

inspect=0; parts=()
for a in "$@"; do
  case "$a" in
    --inspect) inspect=1 ;;
    keras|torch|zoo) parts+=("$a") ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$a' (expected --inspect, keras, torch, zoo)" ;;
  esac
done
((${#parts[@]})) || parts=(keras torch zoo)

# make_venv DIR PKG...: create DIR and install the pinned packages unless its stamp matches.
make_venv() {
  local dir="$1"; shift
  local want; want="$(printf '%s\n' "$@" | sha256sum | cut -d' ' -f1)"
  [ "$(cat "$dir/.real-models-installed" 2>/dev/null)" = "$want" ] && return 0
  command -v "$PY" >/dev/null || die "no $PY to create $dir (set PYTHON=...)"
  if [ ! -x "$dir/bin/python" ]; then
    say "creating $dir"
    "$PY" -m venv "$dir" || die "could not create the virtual environment $dir"
  fi
  say "installing into $dir: $*"
  "$dir/bin/pip" install -q "$@" || die "pip could not install $* into $dir"
  echo "$want" >"$dir/.real-models-installed"
}

# Outputs are regenerated only when the scripts that write them change.
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
up_to_date() { [ -s "$1/manifest.json" ] && [ "$(cat "$1/.stamp" 2>/dev/null)" = "$2" ]; }

failed=()  # a part that fails is reported at the end; the other parts still run
for part in "${parts[@]}"; do
  case "$part" in
    keras)
      want="$(stamp_of "$ROOT/scripts/real_models.py" "$ROOT/tests/model_zoo_forms.py" \
              <(printf '%s\n' "${TF_PKGS[@]}"))"
      up_to_date "$OUT/keras" "$want" && { say "keras: up to date"; continue; }
      make_venv "$TF_VENV" "${TF_PKGS[@]}"
      say "keras: exporting Keras applications with tf2onnx (a few minutes)"
      rm -rf "$OUT/keras"
      "$TF_VENV/bin/python" "$ROOT/scripts/real_models.py" keras --out "$OUT/keras" \
        || { failed+=(keras); continue; }
      echo "$want" >"$OUT/keras/.stamp" ;;
    torch)
      want="$(stamp_of "$ROOT/scripts/real_models.py" "$ROOT/tests/model_zoo_forms.py" \
              <(printf '%s\n' "${TORCH_PKGS[@]}"))"
      up_to_date "$OUT/torch" "$want" && { say "torch: up to date"; continue; }
      make_venv "$TORCH_VENV" "${TORCH_PKGS[@]}"
      say "torch: exporting small CNNs with torch.onnx.export"
      rm -rf "$OUT/torch"
      "$TORCH_VENV/bin/python" "$ROOT/scripts/real_models.py" torch --out "$OUT/torch" \
        || { failed+=(torch); continue; }
      echo "$want" >"$OUT/torch/.stamp" ;;
    zoo)
      want="$(stamp_of "$ROOT/scripts/model_zoo_forms.py" "$ROOT/tests/model_zoo_forms.py")"
      up_to_date "$OUT/zoo" "$want" && { say "zoo: up to date"; continue; }
      [ -x "$PROJECT_PY" ] || die "no project environment at $PROJECT_PY: run scripts/setup.sh"
      say "zoo: writing the ONNX Model Zoo forms (full width, about 1.5 GB)"
      rm -rf "$OUT/zoo"
      "$PROJECT_PY" "$ROOT/scripts/model_zoo_forms.py" --out "$OUT/zoo" \
        || { failed+=(zoo); continue; }
      echo "$want" >"$OUT/zoo/.stamp" ;;
  esac
done

if ((inspect)); then
  MIRRORNET="$(dirname "$PROJECT_PY")/mirrornet"
  [ -x "$MIRRORNET" ] || die "no $MIRRORNET: run scripts/setup.sh first"
  "$PROJECT_PY" "$ROOT/scripts/real_models.py" inspect --out "$OUT" --mirrornet "$MIRRORNET"
fi
say "files and manifests in $OUT"
((${#failed[@]} == 0)) || die "these parts failed (see their messages above): ${failed[*]}"
