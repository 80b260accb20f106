#!/usr/bin/env bash
# optee-env.sh: assemble a real OP-TEE secure world for QEMU from Debian packages, and boot it.
#
#   scripts/optee-env.sh fetch            download + extract the packages, build TF-A (idempotent;
#                                         no network work once everything is cached)
#   scripts/optee-env.sh devkit           print the OP-TEE TA dev kit folder (TA_DEV_KIT_DIR)
#   scripts/optee-env.sh paths            print every artifact path as JSON
#   scripts/optee-env.sh boot OVERLAY [SECURE_LOG]
#                                         boot QEMU with an initramfs made of OVERLAY (a folder laid
#                                         out as the root filesystem, with /init); console on stdout
#
# Everything lands under <repo>/.cache/optee (or $MIRRORNET_OPTEE_CACHE). Packages come from the
# machine's own Debian mirror(s): a private apt configuration reuses the URIs of
# /etc/apt/sources.list.d/debian.sources (or /etc/apt/sources.list) with only the suite changed, and
# never touches the machine's own apt state.
#   host suite (bookworm), arm64: linux-image (tee.ko, optee.ko), libteec1, optee-client-dev,
#                                 tee-supplicant, busybox-static
#   newer suite (trixie), arm64:  optee-os (prebuilt OP-TEE for QEMU), optee-os-dev (TA dev kit)
#   newer suite, source:          arm-trusted-firmware, built once for PLAT=qemu SPD=opteed
# Host tools (scripts/setup.sh installs them): gcc-aarch64-linux-gnu, qemu-system-arm, u-boot-qemu,
# dpkg-dev, cpio.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MIRRORNET_OPTEE_CACHE:-$ROOT/.cache/optee}"
NEW_SUITE="${MIRRORNET_OPTEE_SUITE:-trixie}"
PLATFORM="vexpress-qemu_armv8a"
UBOOT="${MIRRORNET_OPTEE_UBOOT:-/usr/lib/u-boot/qemu_arm64/u-boot.bin}"

HOST_PKGS=(libteec1 optee-client-dev tee-supplicant busybox-static)   # + the kernel, resolved below
NEW_PKGS=(optee-os optee-os-dev)

say() { printf '[optee-env] %s\n' "$*" >&2; }
die() { printf '[optee-env] error: %s\n' "$*" >&2; exit 1; }

host_suite() {
  local codename=""
  if [ -r /etc/os-release ]; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  fi
  [ -n "$codename" ] || die "cannot tell the Debian release of this machine (/etc/os-release has no VERSION_CODENAME)"
  echo "$codename"
}

# Print one-line apt sources ("deb [signed-by=K] URI SUITE COMPONENTS") for the machine's Debian
# entries, with the suite codename $1 replaced by $2 (suffixes such as -updates/-security kept).
derive_sources() {
  local from="$1" to="$2" types="${3:-deb}"
  python3 - "$from" "$to" "$types" <<'EOF'
import re, sys
from pathlib import Path
frm, to, types = sys.argv[1], sys.argv[2], sys.argv[3].split()
entries = []   # (uri, suite, components, signed_by)
deb822 = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
for f in deb822:
    for block in re.split(r"\n\s*\n", f.read_text()):
        fields, key = {}, None
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, val = line.partition(":")
            key = key.strip().lower()
            fields[key] = val.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                entries.append((uri, suite, fields.get("components", "main"), fields.get("signed-by", "")))
for f in [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.list")):
    if not f.exists():
        continue
    for line in f.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
        if not m:
            continue
        opts = m.group(1) or ""
        sb = re.search(r"signed-by=(\S+?)\s*\]?$", opts.strip(" []")) if opts else None
        entries.append((m.group(2), m.group(3), m.group(4).strip(), sb.group(1) if sb else ""))
seen = set()
out = []
for uri, suite, comps, signed in entries:
    base, sep, suffix = suite.partition("-")
    if base != frm:
        continue   # other suites or third-party repositories are not ours to rewrite
    new = to + sep + suffix
    for t in types:
        line = f"{t} " + (f"[signed-by={signed}] " if signed else "") + f"{uri} {new} {comps}"
        if line not in seen:
            seen.add(line)
            out.append(line)
if not out:
    sys.exit(f"no Debian '{frm}' entry found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list")
print("\n".join(out))
EOF
}

# Set up (once) a private apt configuration for suite $1 and export APT_CONFIG for it.
apt_setup() {
  local suite="$1" dir="$CACHE/apt/$1"
  if [ ! -s "$dir/apt.conf" ]; then
    local tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"/{state/lists/partial,cache/archives/partial,sources.list.d,preferences.d}
    : >"$tmp/state/status"
    derive_sources "$(host_suite)" "$suite" "deb deb-src" >"$tmp/sources.list"
    cat >"$tmp/apt.conf" <<EOF
// Private apt configuration for suite $suite, written by scripts/optee-env.sh.
Dir::State "$dir/state";
Dir::State::status "$dir/state/status";
Dir::Cache "$dir/cache";
Dir::Etc::SourceList "$dir/sources.list";
Dir::Etc::SourceParts "$dir/sources.list.d";
Dir::Etc::Preferences "$dir/preferences";
Dir::Etc::PreferencesParts "$dir/preferences.d";
APT::Architecture "$(dpkg --print-architecture)";
APT::Architectures { "$(dpkg --print-architecture)"; "arm64"; };
Acquire::Languages "none";
APT::Sandbox::User "root";
EOF
    rm -rf "$dir"
    mv "$tmp" "$dir"
  fi
  export APT_CONFIG="$dir/apt.conf"
  if [ ! -e "$dir/state/updated" ]; then
    say "apt-get update ($suite, private configuration in $dir)"
    apt-get update -q -o APT::Update::Post-Invoke-Success::= >&2 \
      || die "apt-get update failed for suite $suite (sources: $dir/sources.list)"
    touch "$dir/state/updated"
  fi
}

# Download $2:arm64 from suite $1 and extract it to $CACHE/pkgs/$2 (once).
fetch_pkg() {
  local suite="$1" pkg="$2" dest="$CACHE/pkgs/$2"
  [ -e "$dest/.done" ] && return 0
  apt_setup "$suite"
  local tmp="$CACHE/pkgs/.$pkg.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp/deb" "$tmp/root"
  say "downloading $pkg:arm64 ($suite)"
  if ! (cd "$tmp/deb" && apt-get download -q "$pkg:arm64" >&2); then
    # The package lists may be stale (the mirror moved on): refresh them once and retry.
    rm -f "$CACHE/apt/$suite/state/updated"
    apt_setup "$suite"
    (cd "$tmp/deb" && apt-get download -q "$pkg:arm64" >&2) \
      || die "package $pkg:arm64 is not available in suite $suite (check $CACHE/apt/$suite/sources.list)"
  fi
  local deb
  deb="$(ls "$tmp"/deb/*.deb)"
  dpkg-deb -x "$deb" "$tmp/root"
  dpkg-deb -f "$deb" Package Version Architecture >"$tmp/root/.control"
  rm -rf "$tmp/deb"
  mv "$tmp/root" "$tmp.root" && rm -rf "$tmp"
  touch "$tmp.root/.done"
  rm -rf "$dest"
  mv "$tmp.root" "$dest"
}

# Name of the versioned kernel package the host suite's linux-image-arm64 points at (cached).
kernel_pkg() {
  local f="$CACHE/pkgs/.kernel-package"
  if [ ! -s "$f" ]; then
    apt_setup "$(host_suite)"
    local name
    name="$(apt-cache depends linux-image-arm64:arm64 2>/dev/null \
            | sed -n 's/^ *Depends: \(linux-image-[0-9][^:]*-arm64\)\(:arm64\)\?$/\1/p' | head -1)"
    [ -n "$name" ] || die "cannot resolve linux-image-arm64:arm64 to a kernel package in $(host_suite)"
    mkdir -p "$CACHE/pkgs"
    printf '%s\n' "$name" >"$f.tmp.$$" && mv "$f.tmp.$$" "$f"
  fi
  cat "$f"
}

devkit_dir() {
  local base="$CACHE/pkgs/optee-os-dev/usr/lib/optee-os-dev/$PLATFORM"
  local d
  for d in "$base/export-ta_arm64" "$base"; do
    if [ -f "$d/mk/ta_dev_kit.mk" ]; then echo "$d"; return 0; fi
  done
  d="$(find "$CACHE/pkgs/optee-os-dev" -path "*$PLATFORM*" -name ta_dev_kit.mk 2>/dev/null | head -1)"
  [ -n "$d" ] || return 1
  dirname "$(dirname "$d")"
}

fetch_devkit() { fetch_pkg "$NEW_SUITE" optee-os-dev; }

fetch_tfa_source() {
  local dest="$CACHE/src/arm-trusted-firmware"
  [ -e "$dest/.done" ] && return 0
  command -v dpkg-source >/dev/null || die "dpkg-source not found: apt-get install dpkg-dev"
  apt_setup "$NEW_SUITE"
  local tmp="$CACHE/src/.tfa.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  say "fetching the arm-trusted-firmware source package ($NEW_SUITE)"
  (cd "$tmp" && apt-get source -q arm-trusted-firmware >&2) \
    || die "apt-get source arm-trusted-firmware failed ($NEW_SUITE; needs deb-src entries in $CACHE/apt/$NEW_SUITE/sources.list)"
  local src
  src="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name 'arm-trusted-firmware-*' | head -1)"
  [ -n "$src" ] || die "apt-get source arm-trusted-firmware left no source tree in $tmp"
  touch "$src/.done"
  rm -rf "$dest"
  mv "$src" "$dest"
  rm -rf "$tmp"
}

# Build TF-A (BL1 + FIP with Debian's OP-TEE as BL32 and U-Boot as BL33) into qemu_fw.bios, once.
build_firmware() {
  local out="$CACHE/firmware/qemu_fw.bios"
  [ -s "$out" ] && return 0
  command -v aarch64-linux-gnu-gcc >/dev/null || die "aarch64-linux-gnu-gcc not found: apt-get install gcc-aarch64-linux-gnu"
  [ -s "$UBOOT" ] || die "U-Boot for QEMU arm64 not found at $UBOOT: apt-get install u-boot-qemu"
  local tee="$CACHE/pkgs/optee-os/usr/lib/optee/$PLATFORM"
  local f
  for f in tee-header_v2.bin tee-pager_v2.bin; do
    [ -s "$tee/$f" ] || die "OP-TEE binary $tee/$f missing (package optee-os from $NEW_SUITE)"
  done
  # Debian builds OP-TEE without paging: tee-pageable_v2.bin is empty and is then left out.
  local extra2=()
  [ -s "$tee/tee-pageable_v2.bin" ] && extra2=(BL32_EXTRA2="$tee/tee-pageable_v2.bin")
  local src="$CACHE/src/arm-trusted-firmware"
  local bld="$CACHE/firmware/.build.$$"
  rm -rf "$bld" && mkdir -p "$bld"
  say "building TF-A (PLAT=qemu SPD=opteed, GICv3) in $bld"
  make -C "$src" -j"$(nproc)" BUILD_BASE="$bld" CROSS_COMPILE=aarch64-linux-gnu- \
    PLAT=qemu SPD=opteed QEMU_USE_GIC_DRIVER=QEMU_GICV3 BL32_RAM_LOCATION=tdram \
    BL32="$tee/tee-header_v2.bin" BL32_EXTRA1="$tee/tee-pager_v2.bin" "${extra2[@]}" BL33="$UBOOT" \
    DEBUG=0 LOG_LEVEL=40 all fip >"$bld.log" 2>&1 \
    || { tail -30 "$bld.log" >&2; die "TF-A build failed (log: $bld.log)"; }
  local rel="$bld/qemu/release"
  [ -s "$rel/bl1.bin" ] && [ -s "$rel/fip.bin" ] || die "TF-A build produced no bl1.bin/fip.bin in $rel"
  # Flash image: BL1 at 0, the FIP at 256 KiB (what plat/qemu reads from the flash).
  dd if="$rel/bl1.bin" of="$bld/qemu_fw.bios" bs=4096 conv=notrunc status=none
  dd if="$rel/fip.bin" of="$bld/qemu_fw.bios" seek=64 bs=4096 conv=notrunc status=none
  mkdir -p "$CACHE/firmware"
  cp "$rel/bl1.bin" "$rel/fip.bin" "$CACHE/firmware/"
  mv "$bld.log" "$CACHE/firmware/build.log"
  mv "$bld/qemu_fw.bios" "$out.tmp" && mv "$out.tmp" "$out"
  rm -rf "$bld"
}

kernel_release() {
  local mods="$CACHE/pkgs/$(kernel_pkg)/lib/modules"
  ls "$mods" 2>/dev/null | head -1
}

cmd_fetch() {
  command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian machine"
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
  mkdir -p "$CACHE"
  local steps=$(( ${#NEW_PKGS[@]} + ${#HOST_PKGS[@]} + 3 )) i=0
  local step
  step() { i=$((i + 1)); say "[$i/$steps] $*"; }
  step "TA dev kit (optee-os-dev, $NEW_SUITE)"; fetch_devkit
  devkit_dir >/dev/null || die "optee-os-dev has no $PLATFORM TA dev kit (mk/ta_dev_kit.mk) under $CACHE/pkgs/optee-os-dev"
  step "OP-TEE OS for QEMU (optee-os, $NEW_SUITE)"; fetch_pkg "$NEW_SUITE" optee-os
  local p
  for p in "${HOST_PKGS[@]}"; do step "$p ($(host_suite))"; fetch_pkg "$(host_suite)" "$p"; done
  local k; k="$(kernel_pkg)"
  step "kernel ($k, $(host_suite))"; fetch_pkg "$(host_suite)" "$k"
  step "TF-A source ($NEW_SUITE)"; fetch_tfa_source
  step "TF-A + OP-TEE + U-Boot firmware"; build_firmware
  cmd_paths >"$CACHE/paths.json.tmp" && mv "$CACHE/paths.json.tmp" "$CACHE/paths.json"
  say "ready: $CACHE (artifact paths: $CACHE/paths.json)"
}

cmd_devkit() {
  local d
  if ! d="$(devkit_dir)"; then
    fetch_devkit
    d="$(devkit_dir)" || die "optee-os-dev has no $PLATFORM TA dev kit under $CACHE/pkgs/optee-os-dev"
  fi
  echo "$d"
}

cmd_paths() {
  local k="$CACHE/pkgs/$(kernel_pkg)"
  local rel; rel="$(kernel_release)"
  [ -n "$rel" ] || die "kernel not fetched yet: run scripts/optee-env.sh fetch"
  local devkit; devkit="$(devkit_dir)" || die "TA dev kit not fetched yet: run scripts/optee-env.sh fetch"
  python3 - "$CACHE" "$k" "$rel" "$devkit" "$PLATFORM" "$UBOOT" <<'EOF'
import json, sys
from pathlib import Path
cache, kpkg, rel, devkit, plat, uboot = sys.argv[1:]
cache, kpkg = Path(cache), Path(kpkg)
pk = cache / "pkgs"
def ctl(name):
    f = pk / name / ".control"
    return dict(l.split(": ", 1) for l in f.read_text().splitlines() if ": " in l) if f.exists() else {}
paths = {
    "cache": str(cache),
    "devkit": devkit,
    "firmware": str(cache / "firmware" / "qemu_fw.bios"),
    "kernel": str(kpkg / "boot" / f"vmlinuz-{rel}"),
    "kernel_release": rel,
    "modules": str(kpkg / "lib" / "modules" / rel),
    "optee_os": str(pk / "optee-os" / "usr" / "lib" / "optee" / plat),
    "busybox": str(pk / "busybox-static" / "bin" / "busybox"),
    "tee_supplicant": str(pk / "tee-supplicant" / "usr" / "sbin" / "tee-supplicant"),
    "libteec": str(pk / "libteec1" / "usr" / "lib" / "aarch64-linux-gnu"),
    "teec_include": str(pk / "optee-client-dev" / "usr" / "include"),
    "teec_lib": str(pk / "optee-client-dev" / "usr" / "lib" / "aarch64-linux-gnu"),
    "arm64_libc": "/usr/aarch64-linux-gnu/lib",
    "uboot": uboot,
    "versions": {p.name: ctl(p.name).get("Version", "") for p in sorted(pk.iterdir())
                 if p.is_dir() and not p.name.startswith(".")},
}
print(json.dumps(paths, indent=2))
EOF
}

cmd_boot() {
  local overlay="${1:-}" slog="${2:-/dev/null}"
  [ -n "$overlay" ] && [ -d "$overlay" ] || die "usage: optee-env.sh boot OVERLAY_DIR [SECURE_LOG] (OVERLAY_DIR is the initramfs root, with /init)"
  [ -x "$overlay/init" ] || die "$overlay/init is missing or not executable"
  command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 not found: apt-get install qemu-system-arm"
  local fw="$CACHE/firmware/qemu_fw.bios" kernel
  [ -s "$fw" ] || die "firmware not built yet: run scripts/optee-env.sh fetch"
  kernel="$CACHE/pkgs/$(kernel_pkg)/boot/vmlinuz-$(kernel_release)"
  [ -s "$kernel" ] || die "kernel not fetched yet: run scripts/optee-env.sh fetch"
  BOOT_INITRD="$(mktemp --suffix=.cpio.gz)"
  trap 'rm -f "$BOOT_INITRD"' EXIT
  local initrd="$BOOT_INITRD"
  (cd "$overlay" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$initrd"
  qemu-system-aarch64 -M virt,secure=on,gic-version=3 -cpu cortex-a53 -smp 1 -m 1024 \
      -bios "$fw" -kernel "$kernel" -initrd "$initrd" \
      -append "console=ttyAMA0 rdinit=/init quiet panic=-1" \
      -display none -monitor none -nic none -no-reboot \
      -serial stdio -serial "file:$slog"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  devkit) cmd_devkit ;;
  paths) cmd_paths ;;
  boot) shift; cmd_boot "$@" ;;
  *) die "usage: optee-env.sh fetch | devkit | paths | boot OVERLAY_DIR [SECURE_LOG]" ;;
esac
