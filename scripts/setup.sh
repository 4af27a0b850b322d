#!/usr/bin/env bash
# Installs everything roost needs on Debian 12: QEMU and tools from Debian,
# a virtualenv in .venv with roost and its dependencies. Idempotent.
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh --dev    # plus test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  qemu-system-x86   # the VM monitor; qemu-system-common brings virtiofsd
  qemu-utils        # qemu-img for copy-on-write disks
  openssh-client    # roost shell, ssh readiness, ControlMaster forwarding
  openssh-sftp-server # reverse-sshfs mounts serve folders with sftp-server
  e2fsprogs         # mkfs.ext4 -d builds the built-in image's root disk
  xz-utils          # kernel modules are xz-compressed
  cpio              # tests read the initramfs back with it
  apt dpkg          # the built-in image is assembled from Debian packages
  curl              # bench/cloudboot.py compares image downloads with curl -o
  mmdebstrap        # the debian-12 image: a real Debian root from packages
  grub-pc-bin       # ... booted by SeaBIOS through GRUB (written into its MBR gap)
  fdisk             # ... whose partition table sfdisk writes
  ovmf              # UEFI firmware for images that boot with firmware.legacyBIOS: false
)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The image builder resolves packages with apt-cache; it needs package lists.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  as_root apt-get update -qq
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extra}"
echo "setup: done; roost is .venv/bin/roost"
