#!/bin/sh
# Guest stage 1: /init of the initramfs built by build-guest.sh (busybox only).
# Loads the modules, mounts the host's root fs (9p, read-only) under a tmpfs
# overlay so the guest runs the host's own userland (rdma-core, perftest, the
# freshly built rdmig binaries) with writes discarded at power-off, mounts the
# control and work shares, and switch_roots into stage 2 (guest-stage2.sh).
# Any failure here powers the guest off without writing an exit status, which
# run-in-vm.sh reports as a VM failure (125) together with this console.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
say() { echo "rdmig-rxe-init[$(cut -d' ' -f1 /proc/uptime)]: $*"; }
die() { say "FATAL: $*"; poweroff -f; sleep 5; }

say "loading modules"
for m in $(cat /modules.list); do
  case $m in dummy.ko) a=numdummies=0 ;; *) a= ;; esac   # stage 2 creates its own
  insmod "/lib/modules/$m" $a 2>/tmp.err || say "insmod $m failed: $(cat /tmp.err)"
done

# msize: 9p's default 8 KiB messages make every read a round trip; 512 KB is
# qemu's maximum worth using.
P9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || die "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/u /upper/w
if grep -q 'rdmig_rxe.overlay=0' /proc/cmdline ||
   ! mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot; then
  say "no overlay: the host root stays read-only, with a tmpfs on /tmp"
  mount --move /lower /newroot || die "cannot move the host root"
  mount -t tmpfs -o mode=1777 tmp /newroot/tmp
fi
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=0755 run $R/run
mount -t tmpfs -o mode=1777 vartmp $R/var/tmp 2>/dev/null
mount -t configfs configfs $R/sys/kernel/config 2>/dev/null
mkdir -p $R/run/rdmig-rxe $R/run/rdmig-rxe-guest
# cache=mmap: the host must see what the guest wrote (exit status, test output).
mount -t 9p -o "$P9,rw,cache=mmap" rdmig-ctl $R/run/rdmig-rxe || die "cannot mount the control share (9p tag rdmig-ctl)"
WORKDIR=$(cat $R/run/rdmig-rxe/workdir 2>/dev/null)
if [ -n "$WORKDIR" ]; then
  mkdir -p "$R$WORKDIR" 2>/dev/null
  mount -t 9p -o "$P9,rw,cache=mmap" rdmig-work "$R$WORKDIR" || die "cannot mount the work share at $WORKDIR"
fi
# Stage 2 runs as PID 1 from the new root; it keeps using this static busybox
# (from tmpfs, not 9p) for its own plumbing.
cp /bin/busybox /stage2.sh $R/run/rdmig-rxe-guest/
say "switch_root"
exec switch_root $R /run/rdmig-rxe-guest/busybox sh /run/rdmig-rxe-guest/stage2.sh
