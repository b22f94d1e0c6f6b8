#!/bin/bash
# build-guest.sh [-f] [DIR] -- build (or check) the soft-RoCE test guest: the
# kernel and initramfs that run-in-vm.sh boots.
#
# Why a guest at all: rdmig needs an RDMA device, and the only one a CI machine
# reliably has is soft-RoCE (rdma_rxe).  Host kernels of containers/CI runners
# often have no RDMA support and no loadable modules, so we boot Debian's stock
# kernel (which has rdma_rxe as a module) under qemu and run the tests there.
#
# DIR (default $RDMIG_RXE_DIR, else /var/tmp/rdmig-rxe) receives:
#   vmlinux            uncompressed ELF kernel (qemu boots it via its PVH note,
#                      skipping the in-guest decompression: ~3 s less under TCG)
#   vmlinuz            the packaged bzImage (fallback if vmlinux could not be made)
#   initramfs.cpio.gz  static busybox + the modules for virtio/9p/overlay/rxe
#                      + stage 1 (guest-init.sh) and stage 2 (guest-stage2.sh)
#   kver               kernel release, e.g. 6.1.0-56-amd64
#   stamp              what the build was made from; a mismatch triggers a rebuild
# Rebuilt when this script, guest-init.sh or guest-stage2.sh change, when the
# kernel package (the one linux-image-amd64 depends on) gets a new version, or
# with -f.  Otherwise it only checks and exits (well under a second).
# Safe to run concurrently: builds take an exclusive flock on DIR/.lock,
# run-in-vm.sh holds a shared one while a guest runs, and results are renamed
# into place, so nobody ever boots a half-written or mismatched kernel/initramfs.
#
# Host packages (Debian 12; scripts/install-deps.sh installs them -- this
# script installs nothing):
#   qemu-system-x86 busybox-static kmod cpio xz-utils zstd iproute2 rdma-core
#   ibverbs-providers   (+ binutils, optional: objcopy strips the modules)
# The kernel package itself is fetched with `apt-get download` (needs the apt
# lists, i.e. a prior `apt-get update`, and access to the Debian archive); it is
# unpacked into a scratch dir, never installed.
#
# Env: RDMIG_RXE_DIR        cache dir (when DIR is not given)
#      RDMIG_RXE_KPKG       kernel package to use (default: linux-image-amd64's dependency)
#      RDMIG_RXE_KDEB       path to an already downloaded kernel .deb (offline builds)
#      RDMIG_RXE_KEEP_BUILD=1  keep the scratch dir (unpacked kernel, initramfs tree)
#      RDMIG_RXE_STRIP_MODULES=0  keep module signatures and BTF
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FORCE=0
[ "${1:-}" = -f ] && { FORCE=1; shift; }
case "${1:-}" in -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
DIR=${1:-${RDMIG_RXE_DIR:-/var/tmp/rdmig-rxe}}
log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

need() { # need TOOL PACKAGE -- fail naming the Debian package that provides TOOL
  command -v "$1" >/dev/null 2>&1 ||
    die "'$1' not found; install Debian package '$2' (scripts/install-deps.sh does)"
}
need flock util-linux

mkdir -p "$DIR" || die "cannot create cache dir $DIR"
DIR=$(cd "$DIR" && pwd -P)

# ---- which kernel ------------------------------------------------------------
# apt-cache parses all package lists (~1 s on hosts without pkgcache.bin), and
# this runs before every boot, so remember the answer keyed on the lists' state.
apt_fingerprint() {
  { stat -c '%n %s %Y' /var/lib/apt/lists/*Release /var/lib/apt/lists/*_Packages* 2>/dev/null || true
    echo "kpkg=${RDMIG_RXE_KPKG:-}"; } | cksum | cut -d' ' -f1
}
resolve_kernel() { # prints "PACKAGE VERSION"
  local fp cached line pkg ver
  fp=$(apt_fingerprint)
  cached=$(cat "$DIR/apt-resolved" 2>/dev/null || true)
  if [ "${cached%% *}" = "$fp" ] && [ -n "${cached#* }" ]; then echo "${cached#* }"; return; fi
  if [ -n "${RDMIG_RXE_KPKG:-}" ]; then
    pkg=$RDMIG_RXE_KPKG
    ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | awk '/^Version:/{print $2; exit}')
  else
    # "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)" gives both at once.
    line=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
           grep -oE '^Depends: linux-image-[0-9][^ ,]* \(= [^)]*\)' | head -1 || true)
    pkg=$(echo "$line" | awk '{print $2}')
    ver=$(echo "$line" | sed -n 's/.*(= \(.*\))/\1/p')
  fi
  [ -n "$pkg" ] && [ -n "$ver" ] || return 1
  echo "$fp $pkg $ver" > "$DIR/apt-resolved.tmp.$$" 2>/dev/null &&
    mv -f "$DIR/apt-resolved.tmp.$$" "$DIR/apt-resolved" 2>/dev/null || true
  echo "$pkg $ver"
}

SCRIPTS_SUM=$(cat "$HERE/build-guest.sh" "$HERE/guest-init.sh" "$HERE/guest-stage2.sh" | cksum | cut -d' ' -f1)
if [ -n "${RDMIG_RXE_KDEB:-}" ]; then
  [ -f "$RDMIG_RXE_KDEB" ] || die "RDMIG_RXE_KDEB=$RDMIG_RXE_KDEB: no such file"
  need dpkg-deb dpkg
  KPKG=$(dpkg-deb -f "$RDMIG_RXE_KDEB" Package) KVERSION=$(dpkg-deb -f "$RDMIG_RXE_KDEB" Version)
elif R=$(resolve_kernel); then
  KPKG=${R% *} KVERSION=${R#* }
else
  KPKG='' KVERSION=''
fi

up_to_date() {
  [ -f "$DIR/stamp" ] && [ -f "$DIR/initramfs.cpio.gz" ] && [ -f "$DIR/vmlinuz" ] || return 1
  [ "$FORCE" = 0 ] || return 1
  if [ -z "$KPKG" ]; then
    # Offline / no apt lists: an existing build is better than none.
    grep -q "^scripts=$SCRIPTS_SUM\$" "$DIR/stamp" || return 1
    log "warning: cannot resolve the kernel package (no apt lists? run apt-get update); using the cached $(cat "$DIR/kver" 2>/dev/null)"
    return 0
  fi
  [ "$(cat "$DIR/stamp")" = "$STAMP" ]
}
STAMP="kernel=$KPKG $KVERSION
scripts=$SCRIPTS_SUM"

exec 9>>"$DIR/.lock"
flock -s 9                      # shared: may read while guests are running
up_to_date && exit 0
flock -u 9
if ! flock -n -x 9; then
  log "waiting for the lock on $DIR (another build, or running guests using the old build)"
  flock -x 9
fi
up_to_date && exit 0            # someone else built it while we waited

# ---- tools -------------------------------------------------------------------
[ -n "$KPKG" ] || die "cannot determine the kernel package: 'apt-cache show linux-image-amd64' gave nothing (run apt-get update, or set RDMIG_RXE_KPKG / RDMIG_RXE_KDEB)"
need busybox busybox-static
BUSYBOX=$(command -v busybox)
# The initramfs has no libc: Debian's plain "busybox" package is dynamic.
if LC_ALL=C ldd "$BUSYBOX" 2>&1 | grep -q '=>'; then
  die "$BUSYBOX is dynamically linked; install Debian package 'busybox-static'"
fi
need depmod kmod
need cpio cpio
need xz xz-utils
need zstd zstd
need gzip gzip
need apt-get apt
need dpkg-deb dpkg
# The guest runs the host's own userland: check what stage 2 needs there.
need ip iproute2
need rdma iproute2
ls /usr/lib/*/libibverbs/librxe-rdmav*.so >/dev/null 2>&1 ||
  die "no soft-RoCE verbs provider (librxe-rdmav*.so); install Debian package 'ibverbs-providers'"
STRIP=${RDMIG_RXE_STRIP_MODULES:-1}
if [ "$STRIP" = 1 ] && ! command -v objcopy >/dev/null; then
  log "note: objcopy (binutils) missing; modules keep their BTF sections (slower insmod under TCG)"
  STRIP=0
fi

# ---- 1. kernel package --------------------------------------------------------
WORK=$(mktemp -d "$DIR/build.XXXXXX")
[ "${RDMIG_RXE_KEEP_BUILD:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
log "building the guest from $KPKG $KVERSION in $DIR"
if [ -n "${RDMIG_RXE_KDEB:-}" ]; then
  DEB=$RDMIG_RXE_KDEB
else
  # APT::Sandbox::User=root: as root apt would drop to _apt, which cannot write here.
  ( cd "$WORK" && apt-get -q -o APT::Sandbox::User=root download "$KPKG=$KVERSION" >&2 ) ||
    die "apt-get download $KPKG=$KVERSION failed (network? apt lists current?)"
  DEB=$(ls "$WORK"/*.deb)
fi
KROOT=$WORK/kpkg
mkdir -p "$KROOT"
dpkg-deb -x "$DEB" "$KROOT"
[ -n "${RDMIG_RXE_KDEB:-}" ] || rm -f "$DEB"
# Debian 12 ships modules under /lib/modules, later releases under /usr/lib/modules.
MODBASE=$KROOT/lib/modules; [ -d "$MODBASE" ] || MODBASE=$KROOT/usr/lib/modules
KVER=$(ls "$MODBASE" 2>/dev/null | head -1)
MODDIR=$MODBASE/$KVER
[ -n "$KVER" ] && [ -f "$KROOT/boot/vmlinuz-$KVER" ] || die "$KPKG has no /boot/vmlinuz-<release> and modules"
[ -f "$MODDIR/modules.dep" ] || depmod -b "${MODBASE%/lib/modules}" "$KVER"    # the package ships no modules.dep
grep -q '^CONFIG_RDMA_RXE=[my]' "$KROOT/boot/config-$KVER" || die "kernel $KVER is built without CONFIG_RDMA_RXE"

# ---- 2. the modules we need, dependencies first ------------------------------
# 9p over virtio: the host root fs and the shared dirs; overlay: writable root;
# virtio_console: the guest's stdout/stderr channels; dummy/veth: netdevs for rxe;
# ib_uverbs/rdma_ucm/ib_umad: user-space verbs and rdma_cm; crc32: rxe's ICRC.
ROOTS="virtio_pci 9pnet_virtio 9p virtio_console overlay crc32_generic crc32-pclmul
       dummy veth ib_uverbs ib_umad rdma_ucm rdma_rxe"
declare -A SEEN=()
ORDER=()
modpath() { # module name -> path relative to MODDIR ('-' and '_' are equivalent)
  local n=${1//[-_]/[-_]}
  grep -E "(^|/)${n}\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" | head -1 | cut -d: -f1 || true
}
visit() { # depth-first: a module's dependencies are loaded before it
  local p=$1 d
  [ -n "${SEEN[$p]:-}" ] && return
  SEEN[$p]=1
  for d in $(grep -E "^${p//./\\.}:" "$MODDIR/modules.dep" | cut -d: -f2-); do visit "$d"; done
  ORDER+=("$p")
}
for m in $ROOTS; do
  p=$(modpath "$m")
  if [ -z "$p" ]; then
    grep -qE "/${m//[-_]/[-_]}\.ko" "$MODDIR/modules.builtin" 2>/dev/null && continue   # built in
    case $m in crc32-pclmul|crc32_generic) log "note: module $m not found (optional)"; continue ;; esac
    die "kernel $KVER has no module $m"
  fi
  visit "$p"
done

# ---- 3. initramfs -------------------------------------------------------------
IR=$WORK/initramfs
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,lower,upper,lib/modules}
cp "$BUSYBOX" "$IR/bin/busybox"
for a in $("$IR/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -sf busybox "$IR/bin/$a"
done
: > "$IR/modules.list"
for p in "${ORDER[@]}"; do
  f=$(basename "$p")
  case "$f" in
    *.ko.xz)  f=${f%.xz};  xz -dc "$MODDIR/$p" > "$IR/lib/modules/$f" ;;
    *.ko.zst) f=${f%.zst}; zstd -qdc "$MODDIR/$p" > "$IR/lib/modules/$f" ;;
    *.ko.gz)  f=${f%.gz};  gzip -dc "$MODDIR/$p" > "$IR/lib/modules/$f" ;;
    *)        cp "$MODDIR/$p" "$IR/lib/modules/$f" ;;
  esac
  # objcopy drops the appended signature along with .BTF; both cost seconds of
  # insmod under TCG.  An unsigned module merely taints the kernel.
  if [ "$STRIP" = 1 ]; then
    objcopy --remove-section=.BTF "$IR/lib/modules/$f" 2>/dev/null ||
      log "note: objcopy failed on $f; kept it unstripped"
  fi
  echo "$f" >> "$IR/modules.list"
done
cp "$HERE/guest-init.sh" "$IR/init"
cp "$HERE/guest-stage2.sh" "$IR/stage2.sh"
chmod 755 "$IR/init" "$IR/stage2.sh"
( cd "$IR" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet ) | gzip -1 > "$WORK/initramfs.cpio.gz"
cp "$KROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

# ---- 4. vmlinux: the ELF kernel inside the bzImage ---------------------------
# Find a compressed stream whose payload is an ELF file (Debian uses xz).
for fmt in xz zstd gzip; do
  case $fmt in
    xz)   magic=$'\xfd7zXZ';     dec="xz -dc --single-stream" ;;
    zstd) magic=$'\x28\xb5\x2f\xfd'; dec="zstd -qdc" ;;
    gzip) magic=$'\x1f\x8b\x08'; dec="gzip -dc" ;;
  esac
  for off in $(LC_ALL=C grep -obUa "$magic" "$WORK/vmlinuz" 2>/dev/null | cut -d: -f1 | head -5); do
    tail -c +$((off + 1)) "$WORK/vmlinuz" | $dec > "$WORK/vmlinux" 2>/dev/null || true
    [ "$(head -c 4 "$WORK/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] && break 2
    rm -f "$WORK/vmlinux"
  done
done
[ -f "$WORK/vmlinux" ] || log "note: could not extract vmlinux; guests will boot the slower bzImage"

# ---- 5. publish: rename into place, stamp last --------------------------------
rm -f "$DIR/stamp"
for f in initramfs.cpio.gz vmlinuz; do mv -f "$WORK/$f" "$DIR/$f"; done
if [ -f "$WORK/vmlinux" ]; then mv -f "$WORK/vmlinux" "$DIR/vmlinux"; else rm -f "$DIR/vmlinux"; fi
echo "$KVER" > "$DIR/kver"
echo "$STAMP" > "$DIR/stamp.tmp" && mv -f "$DIR/stamp.tmp" "$DIR/stamp"
[ "${RDMIG_RXE_KEEP_BUILD:-0}" = 1 ] && log "scratch dir kept: $WORK"
log "built $DIR: kernel $KVER, initramfs $(du -h "$DIR/initramfs.cpio.gz" | cut -f1), ${#ORDER[@]} modules: $(tr '\n' ' ' < "$IR/modules.list")"
