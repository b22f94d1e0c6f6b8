#!/run/rdmig-rxe-guest/busybox sh
# shellcheck shell=dash
# Guest stage 2: PID 1 on the host's root fs (under the overlay).  Creates the
# soft-RoCE device rxe0 on a guest-internal netdev, lifts the memlock limit,
# runs the command written by run-in-vm.sh, records its exit status in the
# control share and powers off.
#
# Control share ($CTL, written by run-in-vm.sh): config, cmd.sh, workdir.
# Written here: status (exit status to return), setup_error (why rxe setup
# failed: status 126 from the harness, not from the command), t_cmd_start,
# guest_timeout (the command passed RDMIG_RXE_DEADLINE and was killed) with
# hang_report (what its processes were waiting on).
BB=/run/rdmig-rxe-guest/busybox
CTL=/run/rdmig-rxe
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "rdmig-rxe-stage2[$($BB cut -d' ' -f1 /proc/uptime)]: $*" > /dev/console; }
fin() { say "exit status $1"; echo "$1" > $CTL/status; $BB sync; $BB poweroff -f; $BB sleep 10; }
setup_failed() { say "rxe setup failed: $*"; echo "$*" > $CTL/setup_error; fin 126; }
trap '' INT TERM

hang_report() {   # one line per thread: state, wait channel, the top of its kernel stack
  echo "==== rdmig-rxe: the command is still running at guest uptime $($BB cut -d' ' -f1 /proc/uptime) s (deadline $RDMIG_RXE_DEADLINE s); its threads:"
  for p in /proc/[0-9]*; do
    pid=${p##*/}
    cmd=$($BB tr '\0' ' ' < $p/cmdline 2>/dev/null | $BB cut -c1-60)
    [ -n "$cmd" ] && [ "$pid" != 1 ] || continue     # kernel threads have no command line
    echo "pid $pid (ppid $($BB awk '/^PPid/{print $2}' $p/status 2>/dev/null)) $cmd"
    for t in $p/task/*; do
      echo "  tid ${t##*/} $($BB awk '/^State/{print $2}' $t/status 2>/dev/null) $($BB cat $t/comm 2>/dev/null) in $($BB cat $t/wchan 2>/dev/null):" \
        "$($BB head -n 6 $t/stack 2>/dev/null | $BB sed 's/^.*] //; s/+0x.*//' | $BB tr '\n' ' ')"
    done
  done
  echo "==== kernel log (tail)"
  $BB dmesg 2>/dev/null | $BB tail -n 15
  echo "==== end of the hang report"
}

port() { # virtio-serial port name -> /dev node (the command's stdout/stderr)
  for d in /sys/class/virtio-ports/*; do
    [ "$($BB cat "$d/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return; }
  done
  echo /dev/console
}
OUTDEV=$(port rdmig-rxe.stdout)
ERRDEV=$(port rdmig-rxe.stderr)
. $CTL/config        # RDMIG_RXE_NETDEV RDMIG_RXE_ADDR RDMIG_RXE_MTU, from run-in-vm.sh
# busybox sh prefers its own applets to $PATH, and its "ip" lacks -batch and
# "rdma" does not exist: call the host's iproute2 by full path.
bin() { for d in /usr/sbin /usr/bin /sbin /bin; do [ -x "$d/$1" ] && { echo "$d/$1"; return; }; done; echo "$1"; }
IP=$(bin ip); RDMA=$(bin rdma)
$BB hostname rdmig-rxe
echo "$RDMIG_RXE_ADDR rdmig-rxe" >> /etc/hosts 2>/dev/null   # sticks only with the overlay root

# The netdev under rxe0.  dummy (default): rxe loops packets to its own
# addresses back internally, so one device serves both ends of a connection
# and nothing is ever transmitted; veth: a real pair, for tests that want
# packets on a wire (still inside the guest); lo; none: no rxe device at all.
say "setting up rxe0 on a '$RDMIG_RXE_NETDEV' netdev"
$IP link set lo up > /dev/console 2>&1 || setup_failed "ip link set lo up"
IF=
case "$RDMIG_RXE_NETDEV" in
  dummy) IF=rxe_dummy0
         printf '%s\n' "link add $IF mtu $RDMIG_RXE_MTU type dummy" \
           "addr add $RDMIG_RXE_ADDR/24 dev $IF" "link set $IF up" | $IP -batch - > /dev/console 2>&1 ||
           setup_failed "creating dummy netdev $IF (mtu $RDMIG_RXE_MTU, $RDMIG_RXE_ADDR/24) with ip(8)" ;;
  veth)  IF=rxe_veth0
         printf '%s\n' "link add $IF mtu $RDMIG_RXE_MTU type veth peer name rxe_veth1 mtu $RDMIG_RXE_MTU" \
           "addr add $RDMIG_RXE_ADDR/24 dev $IF" "link set $IF up" "link set rxe_veth1 up" | $IP -batch - > /dev/console 2>&1 ||
           setup_failed "creating veth pair $IF/rxe_veth1 (mtu $RDMIG_RXE_MTU, $RDMIG_RXE_ADDR/24) with ip(8)" ;;
  lo)    IF=lo ;;
  none)  ;;
  *)     setup_failed "unknown RDMIG_RXE_NETDEV '$RDMIG_RXE_NETDEV' (dummy, veth, lo or none)" ;;
esac
if [ -n "$IF" ]; then
  $RDMA link add rxe0 type rxe netdev "$IF" > /dev/console 2>&1 ||
    setup_failed "rdma link add rxe0 type rxe netdev $IF (is rdma_rxe loaded? see the console)"
  i=0
  until $BB grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 100 ] || setup_failed "rxe0 port 1 not ACTIVE after 5 s (state: $($BB cat /sys/class/infiniband/rxe0/ports/1/state 2>&1))"
    $BB usleep 50000
  done
  # The address the tests connect to: the netdev's first IPv4 address.
  ADDR=$($IP -4 -o addr show dev "$IF" | $BB awk '{sub(/\/.*/, "", $4); print $4; exit}')
  [ -n "$ADDR" ] || setup_failed "netdev $IF has no IPv4 address"
  export RDMIG_RXE_DEV=rxe0 RDMIG_RXE_ADDR="$ADDR" RDMIG_RXE_IFACE="$IF"
fi
export RDMIG_RXE_GUEST=1

# Registering (pinning) memory needs RLIMIT_MEMLOCK; the default 8 MiB would
# fail any real migration.  We are root in a throw-away guest: lift it.
ulimit -l unlimited 2>/dev/null && [ "$(ulimit -l)" = unlimited ] ||
  setup_failed "ulimit -l unlimited (memlock limit stays $(ulimit -l))"

$BB cut -d' ' -f1 /proc/uptime > $CTL/t_cmd_start
say "rxe0 ready (${RDMIG_RXE_ADDR:-no address} on ${IF:-no netdev}), running the command"
# cmd.sh: the caller's environment, cd, exec CMD.  Run by the host's /bin/sh
# rather than busybox, so that sh, grep, ... in CMD are the real ones.
/bin/sh $CTL/cmd.sh </dev/null >"$OUTDEV" 2>"$ERRDEV" &
CPID=$!
# The guest's own deadline, ahead of the host's kill: a command that hangs is
# shown (every process's state, wait channel and kernel stacks, the kernel log)
# before it is ended, so a hang seen once in CI can be read rather than guessed.
WPID=
if [ "${RDMIG_RXE_DEADLINE:-0}" -gt 0 ]; then
  (
    now=$($BB cut -d. -f1 /proc/uptime)
    [ "$now" -lt "$RDMIG_RXE_DEADLINE" ] && $BB sleep $((RDMIG_RXE_DEADLINE - now))
    # (the command holds the stderr port, which opens only once: a file)
    hang_report > $CTL/hang_report 2>&1
    $BB touch $CTL/guest_timeout
    $BB kill -9 -1    # every process but PID 1 and this one
  ) &
  WPID=$!
fi
wait $CPID
rc=$?
[ -n "$WPID" ] && $BB kill $WPID 2>/dev/null
[ -f $CTL/guest_timeout ] && rc=124
fin $rc
