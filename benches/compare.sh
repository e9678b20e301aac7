#!/usr/bin/env bash
# Gateway builds side by side with nginx-sni: CPU per connection and sequential p50 latency,
# in alternating rounds, so that a change to the gateway is measured against the build before
# it (and against nginx) on the same machine at the same time.
#
#   benches/compare.sh [ROUNDS] [SECONDS] NAME=BINARY...    as root; ROUNDS alternating rounds
#                                        (default 7) of SECONDS (default 4) per proxy and client
#
# Each BINARY runs sni.sh's gateway config (its sni listener only) on a port of its own, all of
# them and nginx-sni at once on CPU 0; the client on CPU 1 visits them in turn, sequentially and
# with 50 workers, ROUNDS times. CPU per connection from /proc/PID/stat (utime+stime); medians.
# Without NAME=BINARY: target/release/egress-gateway alone (built first).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
# ROUNDS and SECONDS are the leading numeric arguments; the rest are NAME=BINARY.
nums=()
while [ $# -gt 0 ] && [ ${#nums[@]} -lt 2 ] && [[ $1 =~ ^[0-9]+$ ]]; do nums+=("$1"); shift; done
rounds=${nums[0]:-7}
bench_args "${nums[1]:-}" 4
for b in "$@"; do
  [[ $b == ?*=?* ]] || { echo "usage: $0 [ROUNDS] [SECONDS] NAME=BINARY..., not $b" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || die "needs root: the gateway's config sets upstream.mark"
command -v nginx >/dev/null || "$peers" install
cd "$repo"
release_build
builds=("$@")
[ ${#builds[@]} -gt 0 ] || builds=("release=$bin/egress-gateway")

no_time_wait_until_exit

listening 9443 || start_peer nginx-upstream 9443
write_sni_gateway_config 0x2000
declare -A PORT PID
start_peer nginx-sni 9105
PORT[nginx-sni]=9105; PID[nginx-sni]=$(peer_pids nginx-sni | tail -1)
names=(nginx-sni)
i=0
for b in "${builds[@]}"; do
  name=egress-gateway-${b%%=*} exe=${b#*=}
  [ -x "$exe" ] || die "$exe: not an executable"
  i=$((i + 1))
  port=$((9300 + i))
  ! listening "$port" || die "127.0.0.1:$port is in use (a previous run?)"
  sed -e "s|127.0.0.1:9202|127.0.0.1:$port|; s|127.0.0.1:9902|127.0.0.1:$((9400 + i))|; /name: transparent/d" \
    "$run/sni-gateway.yaml" >"$run/compare-$i.yaml"
  taskset -c 0 "$exe" run --config "$run/compare-$i.yaml" >/dev/null 2>"$run/compare-$i.log" &
  pids+=($!)
  PORT[$name]=$port; PID[$name]=$!
  names+=("$name")
  wait_port "$port" 30 || die "$name does not listen on $port"
done
side_by_side "$rounds" "${names[@]}" | tee "$run/results-compare.md"
