#!/bin/bash
# Install everything rdmig needs on Debian 12, by package name. Run as root.
# Safe to run again: apt-get skips what is already there.
set -euo pipefail

PKGS=(
  # build
  build-essential cmake pkg-config clang clang-format
  # transports: rdma-core and libfabric, with their tools
  libibverbs-dev librdmacm-dev ibverbs-providers rdma-core ibverbs-utils rdmacm-utils
  libfabric-dev libfabric-bin
  # the handshake's HMAC
  libssl-dev
  # the benchmark's baseline on rxe
  perftest
  # bench/migrate.sh plots
  gnuplot-nox
  # the soft-RoCE guest (test/rxe): qemu, a static busybox for its initramfs,
  # module tools, archivers for the kernel package, iproute2's ip and rdma
  qemu-system-x86 busybox-static kmod cpio xz-utils zstd gzip binutils iproute2
)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: run as root (apt-get install)" >&2
  exit 1
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
