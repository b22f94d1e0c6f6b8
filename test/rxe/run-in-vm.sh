#!/bin/bash
# run-in-vm.sh CMD [ARG...] -- run CMD as root in a throw-away qemu guest that
# has a soft-RoCE device (rdma_rxe) named rxe0.
#
# The guest boots Debian's stock kernel (built and cached by build-guest.sh,
# which this script calls first) and sees
#   - the host's root fs read-only (9p) under a tmpfs overlay: it runs the
#     host's own binaries and libraries; writes anywhere succeed but are
#     discarded at power-off;
#   - the work dir (default: the current directory) shared READ-WRITE at the
#     same path, so build outputs and results written there survive;
#   - CMD started in the current directory, with the caller's environment
#     (minus RDMIG_RXE_*), stdin /dev/null, `ulimit -l unlimited` (pinned
#     memory registrations need it), and
#       RDMIG_RXE_DEV=rxe0           the RDMA device
#       RDMIG_RXE_ADDR=<IPv4>        address of rxe0's netdev (connect/listen here)
#       RDMIG_RXE_IFACE=<netdev>     that netdev (rxe_dummy0 by default)
#       RDMIG_RXE_GUEST=1            "we are inside the guest"
# The guest has no NIC (-nic none): no packet ever leaves it.  Client and
# server of a test run in the same guest and talk through rxe0's loopback.
#
# CMD's stdout and stderr come out on this script's stdout and stderr, and
# CMD's exit status is this script's exit status, except for harness failures:
#   124  timeout (RDMIG_RXE_TIMEOUT)      125  the VM or guest failed
#   126  rxe setup in the guest failed    (each with a message and the console tail)
# A CMD that itself exits 124-126 is passed through without a message.
#
# Env knobs:
#   RDMIG_RXE_SMP      vCPUs (default 2)              RDMIG_RXE_MEM  guest RAM (default 3G)
#   RDMIG_RXE_TIMEOUT  seconds before the guest is killed (default 900); 45 s
#                      before that the guest prints what each of its processes
#                      waits on (states, kernel stacks, kernel log) and ends CMD: 124
#   RDMIG_RXE_NETDEV   netdev under rxe0: dummy (default) | veth | lo | none (no rxe0)
#   RDMIG_RXE_ADDR     IPv4 given to a dummy/veth netdev (default 10.233.0.1; exists only in the guest)
#   RDMIG_RXE_MTU      netdev MTU (default 9000, so rxe's active_mtu is 4096; 1500 gives 1024)
#   RDMIG_RXE_WORKDIR  host dir shared read-write (default $PWD; empty: none)
#   RDMIG_RXE_ACCEL    auto (default) | kvm | tcg
#   RDMIG_RXE_OVERLAY  1 (default) | 0: read-only host root plus a tmpfs on /tmp
#   RDMIG_RXE_KCMD     extra guest kernel command line
#   RDMIG_RXE_VERBOSE  1: timings on stderr, keep the run dir (console.log, qemu.log)
#   RDMIG_RXE_DIR      guest build cache (default /var/tmp/rdmig-rxe), see build-guest.sh
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ME=run-in-vm
[ $# -gt 0 ] || { echo "usage: $0 CMD [ARG...]   (see the comment at the top for the env knobs)" >&2; exit 2; }
case $1 in -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
T0=$(date +%s.%N)
DIR=${RDMIG_RXE_DIR:-/var/tmp/rdmig-rxe}
SMP=${RDMIG_RXE_SMP:-2} MEM=${RDMIG_RXE_MEM:-3G} TIMEOUT=${RDMIG_RXE_TIMEOUT:-900}
NETDEV=${RDMIG_RXE_NETDEV:-dummy} ADDR=${RDMIG_RXE_ADDR:-10.233.0.1} MTU=${RDMIG_RXE_MTU:-9000}
VERBOSE=${RDMIG_RXE_VERBOSE:-0}
# The guest ends a hung command itself GRACE s before our kill, having written
# what each of its processes waits on (DEADLINE: guest uptime; 0: no deadline).
GRACE=45; DEADLINE=$(( TIMEOUT > 120 ? TIMEOUT - GRACE : 0 ))
fail() { echo "$ME: $1" >&2; exit "${2:-125}"; }
verbose() { [ "$VERBOSE" = 1 ] && echo "$ME: $*" >&2; return 0; }

need() { command -v "$1" >/dev/null 2>&1 || fail "'$1' not found; install Debian package '$2' (scripts/install-deps.sh does)"; }
need qemu-system-x86_64 qemu-system-x86
need timeout coreutils
need flock util-linux
# The guest runs the host's userland: these must exist on the host.
need rdma iproute2
ls /usr/lib/*/libibverbs/librxe-rdmav*.so >/dev/null 2>&1 ||
  fail "no soft-RoCE verbs provider (librxe-rdmav*.so); install Debian package 'ibverbs-providers'"

"$HERE/build-guest.sh" "$DIR" || fail "building the guest kernel/initramfs in $DIR failed (see above)"
DIR=$(cd "$DIR" && pwd -P)
# Shared lock for the guest's lifetime: a rebuild (exclusive) waits for us
# instead of swapping the kernel/initramfs under a starting qemu.
exec 9>>"$DIR/.lock"
flock -s 9
KERNEL=$DIR/vmlinuz; [ -f "$DIR/vmlinux" ] && KERNEL=$DIR/vmlinux     # PVH boot, no decompression

ACCEL=${RDMIG_RXE_ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
  # Only hardware-assisted KVM helps.  A /dev/kvm backed by PVM (module
  # kvm_pvm, no vmx/svm flag) runs a stock kernel through its instruction
  # emulator, far slower than TCG.
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo &&
     [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case $ACCEL in
  kvm) ACCELOPT=(-accel kvm -cpu host) ;;
  tcg) ACCELOPT=(-accel "tcg,thread=multi" -cpu max) ;;
  *)   fail "RDMIG_RXE_ACCEL=$ACCEL: expected auto, kvm or tcg" 2 ;;
esac
BIOS=(); [ -f /usr/share/qemu/qboot.rom ] && BIOS=(-bios /usr/share/qemu/qboot.rom)   # boots faster than SeaBIOS

RUN=$(mktemp -d "${TMPDIR:-/tmp}/rdmig-rxe-run.XXXXXX") || fail "mktemp failed"
QPID='' OPID='' EPID=''
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
  [ -n "$OPID" ] && kill "$OPID" 2>/dev/null
  [ -n "$EPID" ] && kill "$EPID" 2>/dev/null
  if [ "$VERBOSE" = 1 ]; then echo "$ME: run dir kept: $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }   # POSIX sh single-quoting
WORKDIR=${RDMIG_RXE_WORKDIR-$PWD}
if [ -n "$WORKDIR" ]; then
  WORKDIR=$(cd "$WORKDIR" 2>/dev/null && pwd -P) || fail "work dir '${RDMIG_RXE_WORKDIR-$PWD}' is not an accessible directory"
fi
[ "$WORKDIR" = / ] &&
  fail "refusing to share / read-write; cd elsewhere or set RDMIG_RXE_WORKDIR (\"\" = no share)"
printf '%s' "$WORKDIR" > "$RUN/workdir"
{
  echo "RDMIG_RXE_NETDEV=$(q "$NETDEV")"
  echo "RDMIG_RXE_ADDR=$(q "$ADDR")"
  echo "RDMIG_RXE_MTU=$(q "$MTU")"
  echo "RDMIG_RXE_DEADLINE=$DEADLINE"
} > "$RUN/config"
{
  while IFS= read -r v; do
    case $v in PWD|OLDPWD|SHLVL|_|BASH_*|RDMIG_RXE_*) continue ;; esac
    [[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] && echo "export $v=$(q "${!v}")"
  done < <(compgen -e)
  echo "cd $(q "$PWD") || exit 125"
  printf 'exec'; for a in "$@"; do printf ' %s' "$(q "$a")"; done; echo
} > "$RUN/cmd.sh"

# CMD's stdout/stderr travel over two virtio-serial ports into these fifos.
mkfifo "$RUN/stdout.fifo" "$RUN/stderr.fifo"
cat "$RUN/stdout.fifo" & OPID=$!
cat "$RUN/stderr.fifo" >&2 & EPID=$!

SHARES=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$RUN,mount_tag=rdmig-ctl,security_model=none")
[ -n "$WORKDIR" ] && SHARES+=(-virtfs "local,path=$WORKDIR,mount_tag=rdmig-work,security_model=none,multidevs=remap")
# panic=-1 oops=panic: a kernel bug ends the run at once instead of hanging
# until the timeout; so does a soft lockup (softlockup_panic: a CPU stuck in the
# kernel hung a CI run for 1700 s once, with nothing but the watchdog's one-line
# reports to show). Its threshold is 60 s, not the default 20 s
# (watchdog_thresh=30): under TCG on a busy 2-CPU host a vCPU can be off the
# host's CPUs long enough to look stuck, and one such report (45 s, in a
# syscall entry of the migration under test, which went on to pass when the
# run was repeated) failed a CI run; vendors warn of the same for guests under
# load. A CPU stuck for real is still ended, 40 s later. loglevel=5 lets the
# watchdog's register dumps and stacks (printed at the default level, 4) reach
# the console, and every CPU's with them. No self-tests and no mitigations:
# faster under TCG.
APPEND="console=ttyS0 quiet loglevel=5 panic=-1 oops=panic softlockup_panic=1 watchdog_thresh=30"
APPEND+=" softlockup_all_cpu_backtrace=1 cryptomgr.notests mitigations=off"
APPEND+=" rdmig_rxe.overlay=${RDMIG_RXE_OVERLAY:-1} ${RDMIG_RXE_KCMD:-}"

verbose "accel=$ACCEL smp=$SMP mem=$MEM kernel=$KERNEL ($(cat "$DIR/kver")) netdev=$NETDEV workdir=$WORKDIR"
T1=$(date +%s.%N)
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 \
  "${ACCELOPT[@]}" -machine q35 -smp "$SMP" -m "$MEM" "${BIOS[@]}" \
  -nodefaults -no-user-config -display none -vga none -nic none -no-reboot \
  -kernel "$KERNEL" -initrd "$DIR/initramfs.cpio.gz" -append "$APPEND" \
  -serial "file:$RUN/console.log" -monitor none \
  -device virtio-serial-pci,id=vser \
  -chardev "file,id=out,path=$RUN/stdout.fifo" -device virtserialport,bus=vser.0,chardev=out,name=rdmig-rxe.stdout \
  -chardev "file,id=err,path=$RUN/stderr.fifo" -device virtserialport,bus=vser.0,chardev=err,name=rdmig-rxe.stderr \
  "${SHARES[@]}" </dev/null >"$RUN/qemu.log" 2>&1 &
QPID=$!
wait "$QPID"; QRC=$?; QPID=
T2=$(date +%s.%N)
# If qemu died before opening the fifos, their readers still block in open():
# an O_RDWR open never blocks and releases them; closing it gives them EOF.
exec 3<>"$RUN/stdout.fifo" 4<>"$RUN/stderr.fifo"; exec 3>&- 4>&-
wait "$OPID" 2>/dev/null; OPID=
wait "$EPID" 2>/dev/null; EPID=

# The console's tail, and from the guest kernel's first report of a bug (its
# stacks come right after it; a tail of a long report shows only its end).
tails() {
  local first
  if [ -s "$RUN/qemu.log" ]; then echo "---- qemu log (tail) ----" >&2; tail -n 20 "$RUN/qemu.log" >&2; fi
  first=$(grep -n -m1 -E 'BUG:|WARNING:|Kernel panic|Oops' "$RUN/console.log" 2>/dev/null | cut -d: -f1)
  if [ -n "$first" ]; then
    echo "---- guest console: the kernel's first report (line $first, up to 150 lines) ----" >&2
    sed -n "${first},$((first + 149))p" "$RUN/console.log" >&2
  fi
  echo "---- guest console (tail) ----" >&2; tail -n "${1:-40}" "$RUN/console.log" >&2 2>/dev/null
  echo "----" >&2
}
if [ -s "$RUN/status" ]; then
  RC=$(cat "$RUN/status")
  if [ -f "$RUN/guest_timeout" ]; then
    cat "$RUN/hang_report" >&2 2>/dev/null
    echo "$ME: the command was still running $DEADLINE s into the guest's life (RDMIG_RXE_TIMEOUT=$TIMEOUT less $GRACE s): killed; what its processes waited on is above" >&2
    tails 20; RC=124
  elif [ -f "$RUN/setup_error" ]; then
    echo "$ME: rxe setup failed in the guest: $(cat "$RUN/setup_error"); CMD did not run" >&2
    tails 40
  fi
elif [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
  if [ -f "$RUN/t_cmd_start" ]; then what="CMD ran for more than $(awk -v t="$TIMEOUT" -v g="$(cat "$RUN/t_cmd_start")" 'BEGIN{printf "%.0f", t-g}') s"
  else what="the guest did not even reach CMD (boot hung?)"; fi
  echo "$ME: timed out after ${TIMEOUT}s (RDMIG_RXE_TIMEOUT): $what; guest killed" >&2
  tails 40; RC=124
else
  if [ ! -s "$RUN/console.log" ]; then what="qemu failed to start the guest"
  elif [ -f "$RUN/t_cmd_start" ]; then what="the guest died while CMD ran (kernel panic/oops?)"
  else what="the guest failed to boot"; fi
  echo "$ME: VM failure: $what (qemu exit status $QRC, no exit status from the guest)" >&2
  tails 60; RC=125
fi
if [ -f "$RUN/t_cmd_start" ]; then
  verbose "$(awk -v a="$T1" -v b="$T2" -v c="$T0" -v g="$(cat "$RUN/t_cmd_start")" -v acc="$ACCEL" \
    'BEGIN{printf "accel=%s boot-to-CMD %.2fs (guest uptime) | qemu wall %.2fs | total wall %.2fs", acc, g, b-a, b-c}')"
fi
exit "$RC"
