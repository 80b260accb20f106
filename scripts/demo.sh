#!/usr/bin/env bash
# End-to-end MirrorNet protection of a model on Fashion-MNIST with the .venv's `mirrornet`:
#   train-base -> inspect -> strategies -> protect -> compile -> package-ta -> run -> attack
# Usage: scripts/demo.sh OUT_DIR          (`make demo` calls it after `make setup`)
# Environment: DEMO_MODEL (lenet | vgg | resnet, default lenet), DEMO_TEE (sim | qemu | optee, default sim),
#              DEMO_RUN_LIMIT (images for `run`, default 1000), MIRRORNET_VENV (default <repo>/.venv).
# A trained model already in OUT_DIR (model.onnx with its model.onnx.json) is reused. A subcommand that
# exits with code 3 is not built yet: it is reported and the demo goes on; steps that need its output
# are skipped. Any other failure stops the demo with that exit code. Each step's output is also kept in
# OUT_DIR/logs/<step>.log.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIRRORNET_VENV:-$ROOT/.venv}"
MN="$VENV/bin/mirrornet"
MODEL="${DEMO_MODEL:-lenet}"
TEE="${DEMO_TEE:-sim}"
LIMIT="${DEMO_RUN_LIMIT:-1000}"
DATASET=fashion-mnist

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
OUT="$1"
if [ ! -x "$MN" ]; then
  echo "error: $MN not found; run \`make setup\` first" >&2
  exit 1
fi
mkdir -p "$OUT/logs" || exit 1

say() { printf '\n[demo] %s\n' "$*" >&2; }

STEPS=() STATUS=() TIMES=() NOTES=()
record() { STEPS+=("$1"); STATUS+=("$2"); TIMES+=("$3"); NOTES+=("$4"); }

summary() {
  printf '\n%-12s %-16s %8s  %s\n' "step" "status" "seconds" "output"
  printf '%-12s %-16s %8s  %s\n' "----" "------" "-------" "------"
  local i
  for i in "${!STEPS[@]}"; do
    printf '%-12s %-16s %8s  %s\n' "${STEPS[$i]}" "${STATUS[$i]}" "${TIMES[$i]}" "${NOTES[$i]}"
  done
}

# step NAME NOTE NEEDS [--stdout FILE] -- COMMAND...
#   NEEDS: a file or folder the step reads (skipped when an earlier step could not make it), or "-".
#   --stdout FILE: the command's standard output is the step's result, written to FILE atomically.
step() {
  local name="$1" note="$2" needs="$3"; shift 3
  local capture=""
  if [ "$1" = "--stdout" ]; then capture="$2"; shift 2; fi
  shift  # --
  if [ "$needs" != "-" ] && [ ! -e "$needs" ]; then
    say "$name: skipped (no $needs: an earlier step did not make it)"
    record "$name" "skipped" "-" "needs $needs"
    return
  fi
  say "$name: mirrornet ${*}"
  local log="$OUT/logs/$name.log" t0=$SECONDS rc
  if [ -n "$capture" ]; then
    "$MN" "$@" 2>&1 >"$capture.tmp" | tee "$log" >&2  # stdout to the file, stderr shown and logged
    rc=${PIPESTATUS[0]}
    if [ $rc = 0 ]; then mv -f "$capture.tmp" "$capture"; else rm -f "$capture.tmp"; fi
  else
    "$MN" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  local dt=$((SECONDS - t0))
  case $rc in
    0) record "$name" "ok" "$dt" "$note" ;;
    3) say "$name: not built yet"; record "$name" "not built yet" "$dt" "-" ;;
    *)
      record "$name" "FAILED (exit $rc)" "$dt" "see $log"
      say "$name failed with exit code $rc; stopping"
      summary
      exit "$rc"
      ;;
  esac
}

BASE="$OUT/model.onnx"
ARTIFACT="$OUT/artifact"
BUILD="$OUT/build"

# 1. A base model (reused when already trained).
if [ -s "$BASE" ] && [ -s "$BASE.json" ]; then
  say "train-base: reusing $BASE (delete it to retrain)"
  record "train-base" "reused" "-" "$BASE"
else
  step train-base "$BASE" - -- train-base --model "$MODEL" --dataset "$DATASET" -o "$BASE"
fi

# 2-3. What the tool sees in it, and the CPM strategies that fit the secure memory.
step inspect "layers, FLOPs, taps" "$BASE" -- inspect "$BASE"
step strategies "$OUT/strategies.json" "$BASE" --stdout "$OUT/strategies.json" -- strategies "$BASE" --json

# 4. MirrorNet: joint training of the backbone and the CPM.
step protect "$ARTIFACT/" "$BASE" -- protect "$BASE" --dataset "$DATASET" --auto -o "$ARTIFACT"

# 5-6. Backbone through TVM, CPM as C, then the trusted application.
step compile "$BUILD/" "$ARTIFACT/combined.onnx" -- compile "$ARTIFACT" -o "$BUILD"
step package-ta "TA in $BUILD/" "$BUILD/manifest.json" -- package-ta "$BUILD"

# 7-8. Protected inference, and what a thief gets from the backbone alone.
step run "$TEE, $LIMIT images" "$BUILD/manifest.json" -- run "$BUILD" --dataset "$DATASET" --tee "$TEE" --limit "$LIMIT"
step attack "security evaluation" "$ARTIFACT/combined.onnx" -- attack "$ARTIFACT" --dataset "$DATASET"

summary
