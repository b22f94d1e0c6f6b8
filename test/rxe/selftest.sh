#!/bin/bash
# selftest.sh -- end-to-end check of the soft-RoCE guest harness (run-in-vm.sh).
#
# Boots the guest twice (~6 s each under TCG once the guest is built; the first
# run also builds it, which downloads the kernel package) and checks that
#   - rxe0 exists and its port is PORT_ACTIVE (ibv_devinfo),
#   - libfabric's verbs provider offers an FI_EP_MSG endpoint on rxe0 (fi_info),
#   - RDMA traffic flows over rxe0 (ibv_rc_pingpong, server and client),
#   - RDMIG_RXE_DEV/RDMIG_RXE_ADDR describe it, `ulimit -l` is unlimited,
#   - the guest has no network interface that could reach outside,
#   - the work dir is shared read-write, writes elsewhere stay in the guest,
#   - CMD's stdout and stderr come back separately,
#   - CMD's exit status comes back (second boot: sh -c 'exit 3' must give 3).
# Prints one PASS/FAIL line per check; exits 0 only if all pass.
# Needs, besides what build-guest.sh lists: ibverbs-utils (ibv_devinfo,
# ibv_rc_pingpong) and libfabric-bin (fi_info).
# Env: RDMIG_RXE_* knobs as for run-in-vm.sh.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

pass() { echo "PASS $1"; }
failc() { echo "FAIL $1: $2"; }

gid_index() { # GID index of $RDMIG_RXE_ADDR (IPv4-mapped) on rxe0 port 1; else 0
  local hex g
  hex=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${RDMIG_RXE_ADDR//./ } 2>/dev/null)
  for g in /sys/class/infiniband/"$RDMIG_RXE_DEV"/ports/1/gids/*; do
    [ "$(cat "$g" 2>/dev/null)" = "$hex" ] && { echo "${g##*/}"; return; }
  done
  echo 0
}

# ---- the part that runs inside the guest ---------------------------------------
if [ "${1:-}" = --in-guest ]; then
  TOKEN=$2
  echo "selftest-stderr-$TOKEN" >&2
  if [ "${RDMIG_RXE_DEV:-}" = rxe0 ] && [ -n "${RDMIG_RXE_ADDR:-}" ] &&
     ip -4 -o addr show | grep -q "inet $RDMIG_RXE_ADDR/"; then
    pass "env: RDMIG_RXE_DEV=rxe0, RDMIG_RXE_ADDR=$RDMIG_RXE_ADDR is assigned (${RDMIG_RXE_IFACE:-?})"
  else
    failc env "RDMIG_RXE_DEV='${RDMIG_RXE_DEV:-}' RDMIG_RXE_ADDR='${RDMIG_RXE_ADDR:-}' (addresses: $(ip -4 -o addr show | awk '{printf "%s=%s ", $2, $4}'))"
  fi
  if ! command -v ibv_devinfo >/dev/null; then failc ibv_devinfo "not installed (Debian package ibverbs-utils)"
  elif out=$(ibv_devinfo -d rxe0 2>&1) && grep -q 'state:.*PORT_ACTIVE' <<<"$out"; then
    pass "ibv_devinfo: rxe0 port 1 is PORT_ACTIVE, active_mtu $(awk '/active_mtu/{print $2; exit}' <<<"$out")"
  else
    failc ibv_devinfo "rxe0 not PORT_ACTIVE: $({ grep -E 'state|hca_id' <<<"$out" || head -n 2 <<<"$out"; } | tr -s '\t\n' '  ' | head -c 300)"
  fi
  if ! command -v fi_info >/dev/null; then failc fi_info "not installed (Debian package libfabric-bin)"
  else
    out=$(fi_info -p verbs 2>&1)
    # one record per "provider:" line; want provider verbs, domain rxe0, type FI_EP_MSG
    if awk '/^provider:/{p=$2; d=""; t=""} /domain:/{d=$2} /type:/{t=$2; if (p=="verbs" && d=="rxe0" && t=="FI_EP_MSG") ok=1}
            END{exit !ok}' <<<"$out"; then
      pass "fi_info -p verbs: FI_EP_MSG endpoint on domain rxe0"
    else
      failc fi_info "no verbs FI_EP_MSG entry on rxe0: $(head -c 300 <<<"$out")"
    fi
  fi
  if command -v ibv_rc_pingpong >/dev/null; then
    gid=$(gid_index)
    timeout 60 ibv_rc_pingpong -d rxe0 -g "$gid" -n 20 -p 18517 >/tmp/pp-server.log 2>&1 & spid=$!
    out=
    for _ in $(seq 50); do     # client retries until the server listens
      out=$(timeout 60 ibv_rc_pingpong -d rxe0 -g "$gid" -n 20 -p 18517 "$RDMIG_RXE_ADDR" 2>&1) && break
      sleep 0.2
    done
    wait "$spid"; src=$?
    if [ $src = 0 ] && grep -q 'iters in' <<<"$out"; then
      pass "rdma traffic: ibv_rc_pingpong over rxe0 (gid index $gid): $(grep 'iters in' <<<"$out" | head -1)"
    else
      failc "rdma traffic" "ibv_rc_pingpong failed (server rc $src): $(tail -n 3 /tmp/pp-server.log | tr '\n' ' ') | $(tail -n 3 <<<"$out" | tr '\n' ' ')"
    fi
  else
    failc "rdma traffic" "ibv_rc_pingpong not installed (Debian package ibverbs-utils)"
  fi
  l=$(ulimit -l)
  if [ "$l" = unlimited ]; then pass "ulimit -l is unlimited"; else failc "ulimit -l" "is $l, want unlimited"; fi
  nics=
  for n in /sys/class/net/*; do
    case ${n##*/} in lo|rxe_dummy0|rxe_veth[01]) ;; *) nics="$nics ${n##*/}" ;; esac
  done
  if [ -z "$nics" ]; then pass "no network interface besides lo and rxe's netdev"
  else failc "isolation" "unexpected network interfaces: $nics"; fi
  if echo "$TOKEN" > "$PWD/selftest-token" && [ "$(cat "$PWD/selftest-token")" = "$TOKEN" ]; then
    pass "work dir $PWD is writable (host checks it got the file)"
  else
    failc "work dir" "cannot write $PWD/selftest-token"
  fi
  # The overlay: the host's root is writable in the guest but nothing reaches the host.
  if echo "$TOKEN" > "/usr/rdmig-selftest-$TOKEN"; then pass "writes outside the work dir succeed in the guest (overlay)"
  else failc overlay "cannot write /usr/rdmig-selftest-$TOKEN in the guest"; fi
  exit 0
fi

# ---- host side ----------------------------------------------------------------
[ $# = 0 ] || { echo "usage: $0   (boots the guest; no arguments)" >&2; exit 2; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/rdmig-rxe-selftest.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
TOKEN=$$-$RANDOM$RANDOM
cd "$TMP" || exit 1
export RDMIG_RXE_WORKDIR=$TMP
echo "rxe selftest: boot 1: $HERE/selftest.sh --in-guest (work dir $TMP)"
t0=$(date +%s.%N)
"$HERE/run-in-vm.sh" "$HERE/selftest.sh" --in-guest "$TOKEN" >"$TMP/out" 2>"$TMP/err"
rc=$?
t1=$(date +%s.%N)
cat "$TMP/out"
{
  if [ $rc = 0 ]; then pass "boot 1: run-in-vm.sh exit status 0 ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)"
  else failc "boot 1" "run-in-vm.sh exit status $rc; its stderr:"; sed 's/^/    /' "$TMP/err"; fi
  if grep -qx "selftest-stderr-$TOKEN" "$TMP/err" && ! grep -q "selftest-stderr" "$TMP/out"; then
    pass "CMD's stderr arrives separately from its stdout"
  else failc "stderr" "CMD's stderr marker missing from run-in-vm.sh's stderr"; fi
  if [ "$(cat "$TMP/selftest-token" 2>/dev/null)" = "$TOKEN" ]; then pass "the host sees the file the guest wrote in the work dir"
  else failc "work dir share" "the host does not see $TMP/selftest-token with the guest's content"; fi
  if [ ! -e "/usr/rdmig-selftest-$TOKEN" ]; then pass "the guest's writes outside the work dir did not reach the host"
  else rm -f "/usr/rdmig-selftest-$TOKEN"; failc "host protection" "the guest's write to /usr/rdmig-selftest-$TOKEN reached the host"; fi
} | tee -a "$TMP/out"

echo "rxe selftest: boot 2: sh -c 'exit 3'"
t0=$(date +%s.%N)
"$HERE/run-in-vm.sh" sh -c 'exit 3' 2>"$TMP/err2"
rc=$?
t1=$(date +%s.%N)
if [ $rc = 3 ]; then pass "exit status propagates (sh -c 'exit 3' gave 3, $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)"
else failc "exit status" "sh -c 'exit 3' gave $rc; stderr: $(tail -n 20 "$TMP/err2")"; fi | tee -a "$TMP/out"

npass=$(grep -c '^PASS' "$TMP/out"); nfail=$(grep -c '^FAIL' "$TMP/out")
NCHECKS=13     # 8 in the guest, 4 after boot 1, 1 for boot 2
if [ "$nfail" = 0 ] && [ "$npass" -ge $NCHECKS ]; then
  echo "rxe selftest: all $npass checks passed"; exit 0
fi
echo "rxe selftest: FAILED ($nfail failed, $npass passed):"; grep '^FAIL' "$TMP/out" | sed 's/^/  /'
[ "$nfail" != 0 ] || echo "  (fewer checks reported than expected: the guest part did not finish)"
exit 1
