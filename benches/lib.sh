# shellcheck shell=bash
# Shell helpers shared by benches/run.sh, sni.sh and instructions.sh (sourced; the functions need
# $run and $peers, which bench_args sets).

bench_args() { # "$1" default: sets secs (SECONDS from $1, else the default), peers, run, certs
  secs=${1:-$2}
  case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
  peers=${PEERS:-$repo/../shared/bench/peers.sh}
  [ -f "$peers" ] || { echo "$0: no peers.sh at $peers (set PEERS)" >&2; exit 2; }
  export BENCH_RUN_DIR=${BENCH_RUN_DIR:-/tmp/egress-bench-peers}
  run=$BENCH_RUN_DIR
  certs=${BENCH_CERTS:-$run/certs}
  mkdir -p "$run"
}
release_build() { # release builds of the gateway and egress-bench (sets bin), peers.sh's certificates
  (cd "$repo" && cargo build --release -q -p egress-gateway -p egress-bench)
  bin=$repo/target/release
  if ! { [ -f "$certs/ca.crt" ] && openssl x509 -checkend 3600 -noout -in "$certs/server.crt" >/dev/null 2>&1; }; then
    "$peers" certs "$certs" >/dev/null
  fi
}

log() { echo "$(basename "$0"): $*" >&2; }
die() { log "$*"; exit 1; }
field() { # line n: the n-th word of a result line, or n/a
  local v; v=$(awk -v n="$2" '{print $n}' <<<"$1"); echo "${v:-n/a}"
}
envoy_bin() { echo "${ENVOY:-$(ls "$run"/envoy-venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1)}"; }
write_sni_gateway_config() { # mark: $run/sni-gateway.yaml and its policy, for sni.sh and instructions.sh
  # sni listener 9202 (upstreamPort 9443), transparent listener 9203; upstream.test allowed on 9443,
  # 127.0.0.1:9001 (the discard upstream) by address.
  cat >"$run/sni-policy.yaml" <<'EOF'
version: 1
rules:
  - name: bench
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      - host: upstream.test
        ports: [9443]
        allowPrivateAddresses: true
      - cidr: 127.0.0.1/32
        ports: [9001]
EOF
  cat >"$run/sni-gateway.yaml" <<EOF
listeners:
  - {name: sni, kind: sni, address: "127.0.0.1:9202", upstreamPort: 9443}
  - {name: transparent, kind: transparent, address: "127.0.0.1:9203"}
policy: {path: $run/sni-policy.yaml}
dns: {hosts: {upstream.test: [127.0.0.1]}}
upstream: {mark: $1}
limits: {maxConnections: 1000000}
admin: {address: "127.0.0.1:9902"}
log: {format: text, level: warn}
EOF
}
alive() { # pid: running and not a zombie
  local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  case $s in Z*) return 1 ;; *) return 0 ;; esac
}
wait_gone() { # pid seconds
  local i; for ((i = 0; i < $2 * 10; i++)); do alive "$1" || return 0; sleep 0.1; done; return 1
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds
  local i; for ((i = 0; i < $2 * 10; i++)); do listening "$1" && return 0; sleep 0.1; done; return 1
}
cpu_ticks() { # pid...: utime+stime summed over the processes, in clock ticks
  local p sum=0 t
  for p in "$@"; do
    # Fields after the ')' that closes comm: state is field 3, so utime (14) is $12, stime (15) $13.
    t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || return 1
    [ -n "$t" ] || return 1
    sum=$((sum + t))
  done
  echo "$sum"
}

# Peers started by name (peers.sh), the gateway, and background helpers, for sni.sh.
started_peers=() gw_pid="" bg_pids=()
peer_pids() { # name: the peer's processes (nginx: master and workers)
  local master; master=$(cat "$run/$1.pid")
  echo "$master"; pgrep -P "$master" || true
}
start_peer() { # name port
  listening "$2" && die "127.0.0.1:$2 is already in use (a previous run?)"
  "$peers" start "$1" >/dev/null || die "$1 did not start"
  started_peers+=("$1")
  wait_port "$2" 20 || die "$1 does not listen on $2"
}
stop_peer() { # name
  local pid=""; [ -f "$run/$1.pid" ] && pid=$(cat "$run/$1.pid")
  "$peers" stop "$1" >/dev/null 2>&1 || true
  [ -z "$pid" ] || wait_gone "$pid" 15 || kill -KILL "$pid" 2>/dev/null || true
}
start_gateway() { # config port
  listening "$2" && die "127.0.0.1:$2 is already in use (a previous run?)"
  taskset -c 0 "$bin/egress-gateway" run --config "$1" >/dev/null 2>"$run/egress-gateway.log" &
  gw_pid=$!
  wait_port "$2" 20 || { cat "$run/egress-gateway.log" >&2; die "egress-gateway does not listen on $2"; }
}
stop_gateway() {
  [ -n "$gw_pid" ] || return 0
  kill -TERM "$gw_pid" 2>/dev/null || true
  wait_gone "$gw_pid" 30 || kill -KILL "$gw_pid" 2>/dev/null || true
  wait "$gw_pid" 2>/dev/null || true
  gw_pid=""
}
stop_all() {
  local p
  for p in "${started_peers[@]}"; do stop_peer "$p"; done
  stop_gateway
  for p in "${bg_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
no_time_wait_until_exit() { # as root: pids=() for the caller's own processes, killed at exit by
  # cleanup, which also stops the peers and restores net.ipv4.tcp_max_tw_buckets. As run.sh: no
  # TIME_WAIT sockets during the run, so that connection rates do not depend on order.
  pids=()
  tw_old=$(sysctl -n net.ipv4.tcp_max_tw_buckets)
  cleanup() {
    local p
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    sysctl -qw net.ipv4.tcp_max_tw_buckets="$tw_old"
    stop_all
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  sysctl -qw net.ipv4.tcp_max_tw_buckets=0
}

# Proxies measured side by side (compare.sh, pgo.sh): each is running, on CPU 0, at 127.0.0.1:PORT[name]
# with its process PID[name]; the client on CPU 1 visits them in turn, sequentially and at c=50,
# ROUNDS rounds of $secs each. Prints a table of median CPU µs per connection and sequential p50.
side_by_side() { # rounds name...
  local rounds=$1 r n c t0 t1 out conns
  shift
  local -A CPUS P50S
  for c in 1 50; do
    for r in $(seq 1 "$rounds"); do
      for n in "$@"; do
        t0=$(cpu_ticks "${PID[$n]}")
        out=$(taskset -c 1 "$bin/egress-bench" tls-rate --mode http --ca "$certs/ca.crt" --server-name upstream.test \
          --pq-share --target "127.0.0.1:${PORT[$n]}" --sources 16 --seconds "$secs" --concurrency "$c" --label "$n" 2>/dev/null)
        t1=$(cpu_ticks "${PID[$n]}")
        conns=$(awk -v s="$secs" '{ printf "%d", $3 * s }' <<<"$out")
        [ "$conns" -gt 0 ] || die "$n: no connection completed"
        CPUS[$n,$c]="${CPUS[$n,$c]:-} $(awk -v d=$((t1 - t0)) -v n="$conns" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')"
        [ "$c" = 1 ] && P50S[$n]="${P50S[$n]:-} $(field "$out" 8)"
      done
    done
  done
  median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
  echo
  echo "### Side by side, $(date -u +%Y-%m-%dT%H:%MZ), $rounds alternating rounds of ${secs} s, commit $(git -C "$repo" rev-parse --short HEAD)"
  echo
  echo "| proxy | CPU µs/conn, sequential (median) | CPU µs/conn, c=50 (median) | sequential p50 µs (median) | rounds, sequential | rounds, c=50 |"
  echo "| --- | ---: | ---: | ---: | --- | --- |"
  for n in "$@"; do
    echo "| $n | $(median "${CPUS[$n,1]}") | $(median "${CPUS[$n,50]}") | $(median "${P50S[$n]}") |${CPUS[$n,1]} |${CPUS[$n,50]} |"
  done
}
