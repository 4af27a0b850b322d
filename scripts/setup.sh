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
  rsync             # roost copy --backend rsync (auto: when both sides have it)
  openssh-server    # unit tests run their own sshd; the system service stays off
  e2fsprogs         # mkfs.ext4 -d builds the built-in image's root disk
  xz-utils          # kernel modules are xz-compressed
  cpio              # tests read the initramfs back with it
  apt dpkg          # the built-in image is assembled from Debian packages
  curl              # bench/cloudboot.py compares image downloads with curl -o
  mmdebstrap        # the debian-12 image: a real Debian root from packages
  grub-pc-bin       # ... booted by SeaBIOS through GRUB (written into its MBR gap)
  grub-efi-amd64-bin # ... or by UEFI (OVMF), GRUB on its EFI system partition
  mtools dosfstools # ... a FAT file system made and filled without mounting it
  fdisk             # ... whose partition table sfdisk writes
  ovmf              # UEFI firmware for images that boot with firmware.legacyBIOS: false
  uidmap            # newuidmap/newgidmap: a normal user's virtiofsd, confined as them
  openssl           # tests make the CA and the server certificate caCerts is tested with
)
if [ "${1:-}" = "--dev" ]; then
  DEBIAN_PACKAGES+=(python3-venv)  # scripts/test-as-user.sh: a venv on the system's python3
  DEBIAN_PACKAGES+=(ansible-core)  # tests: Ansible through ssh -F ~/.roost/NAME/ssh.config
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
# openssh-server is for the tests only: if this run installs it, the install
# must not start the system sshd (invoke-rc.d asks policy-rc.d; exit 101 is
# "no"), and the service is left disabled afterwards.
installs_sshd=false
for pkg in "${missing[@]}"; do [ "$pkg" = openssh-server ] && installs_sshd=true; done
POLICY_RC=/usr/sbin/policy-rc.d
own_policy=false
if $installs_sshd && [ ! -e "$POLICY_RC" ]; then
  own_policy=true
  trap 'as_root rm -f "$POLICY_RC"' EXIT
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_RC" >/dev/null
  as_root chmod 755 "$POLICY_RC"
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if $own_policy; then
  as_root rm -f "$POLICY_RC"
  trap - EXIT
fi
if $installs_sshd; then
  now=""
  [ -d /run/systemd/system ] && now=--now  # systemd runs: stop it too
  if command -v systemctl >/dev/null; then
    as_root systemctl disable ${now:+"$now"} ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
  as_root update-rc.d ssh disable >/dev/null 2>&1 || true
fi
# The image builder resolves packages with apt-cache; it needs package lists.
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  as_root apt-get update -qq
fi

# The tests run the end-to-end suite as a normal user too (scripts/test-as-user.sh):
# one with a subordinate id range, as Debian's adduser gives every new user.
TEST_USER=roosttest
if [ "${1:-}" = "--dev" ] && [ "$(id -u)" -eq 0 ]; then
  id "$TEST_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$TEST_USER"
  grep -q "^$TEST_USER:" /etc/subuid 2>/dev/null || usermod --add-subuids 200000-265535 "$TEST_USER"
  grep -q "^$TEST_USER:" /etc/subgid 2>/dev/null || usermod --add-subgids 200000-265535 "$TEST_USER"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
# compat: a plain path in a .pth, not an import finder that costs every
# start-up (`roost ls`) ~20 ms of imports.
.venv/bin/pip install -q --disable-pip-version-check --config-settings editable_mode=compat \
  -e ".${extra}"
# Byte-compiled now, as a regular install is: an editable one is not, and
# where PYTHONDONTWRITEBYTECODE is set (as on CI machines) every `roost`
# command and host agent would compile its modules afresh (~0.1-0.3 s).
.venv/bin/python -m compileall -q roost roost_guest
echo "setup: done; roost is .venv/bin/roost"
