#!/usr/bin/env bash
# User-space instructions per connection, gateway sni listener against nginx ssl_preread, counted
# by valgrind's callgrind: a figure that does not move with the machine's load, unlike CPU time.
#
#   benches/instructions.sh [SECONDS]    SECONDS of sequential TLS connections per proxy (default 5).
#                                        Root: sni.sh's gateway config sets upstream.mark (SO_MARK).
#
# Each proxy runs under callgrind (nginx as one process: master_process off), pinned to CPU 0;
# its counters are zeroed once it listens, the sequential client of sni.sh (one worker, TLS 1.3
# with a post-quantum-sized key share, GET /, close) runs for SECONDS, then the counters are
# dumped. Instructions ÷ connections, start-up excluded. The count includes everything the process
# runs in user space (libc, the runtime, the allocator); a `rep movs`/`rep stos` counts once per
# iteration, so bulk copies weigh more here than in time. Needs valgrind (apt-get install valgrind).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
bench_args "${1:-}" 5
[ "$(id -u)" = 0 ] || die "needs root: the gateway's config sets upstream.mark"
command -v valgrind >/dev/null || die "needs valgrind (apt-get install valgrind)"
command -v nginx >/dev/null || "$peers" install
cd "$repo"
release_build

vg_pid=""
cleanup() { [ -z "$vg_pid" ] || kill -KILL "$vg_pid" 2>/dev/null || true; stop_all; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start_peer nginx-upstream 9443
# peers.sh writes nginx-sni's config when it starts it: start it once, then run that config
# under callgrind as a single process.
start_peer nginx-sni 9105
stop_peer nginx-sni
# sni.sh's gateway config (its transparent listener stays unused here).
write_sni_gateway_config 0x2000

declare -A IR
count() { # name port command...: instructions per connection of COMMAND while the client runs
  local name=$1 port=$2 out n ir f
  shift 2
  rm -f "$run/callgrind.$name".*
  taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$run/callgrind.$name.%p" "$@" \
    >/dev/null 2>"$run/callgrind-$name.log" &
  vg_pid=$!
  wait_port "$port" 120 || { cat "$run/callgrind-$name.log" >&2; die "$name does not listen on $port"; }
  sleep 1
  callgrind_control --zero "$vg_pid" >/dev/null
  out=$(taskset -c 1 "$bin/egress-bench" tls-rate --mode http --ca "$certs/ca.crt" \
    --server-name upstream.test --pq-share --target "127.0.0.1:$port" --sources 16 \
    --seconds "$secs" --concurrency 1 --label "$name" 2>/dev/null) || die "$name: the client failed"
  callgrind_control --dump "$vg_pid" >/dev/null
  sleep 1
  kill -KILL "$vg_pid" 2>/dev/null || true; wait "$vg_pid" 2>/dev/null || true; vg_pid=""
  n=$(awk -v s="$secs" '{ printf "%d", $3 * s }' <<<"$out")
  ir=0
  # The dump after --zero holds the instructions since then, one file per thread or part.
  for f in "$run/callgrind.$name".*; do
    [ -s "$f" ] || continue
    ir=$((ir + $(awk '/^summary:/ { print $2 }' "$f" | head -1)))
  done
  [ "$n" -gt 0 ] || die "$name: no connection completed"
  IR[$name]=$((ir / n))
  log "$name: $n connections, ${IR[$name]} instructions per connection"
}

count nginx-sni 9105 nginx -e stderr -p "$run" -c "$run/nginx-sni.conf" -g 'daemon off; master_process off;'
count egress-gateway-sni 9202 "$bin/egress-gateway" run --config "$run/sni-gateway.yaml"

{
  echo
  echo "### Instructions per connection, $(date -u +%Y-%m-%dT%H:%MZ), ${secs} s per proxy, commit $(git -C "$repo" rev-parse --short HEAD)"
  echo
  echo "| proxy | user-space instructions per connection | ratio |"
  echo "| --- | ---: | ---: |"
  for n in nginx-sni egress-gateway-sni; do
    echo "| $n | ${IR[$n]} | $(awk -v a="${IR[$n]}" -v b="${IR[nginx-sni]}" 'BEGIN { printf "%.2f", a / b }') × |"
  done
} | tee "$run/results-instructions.md"
