#!/usr/bin/env bash
# Reproduce the benchmark table of docs/benchmarks.md: egress-gateway against the direct path and
# its peers (haproxy, nginx, Envoy, Squid), on loopback, every path measured by the same client.
#
#   benches/run.sh [SECONDS]          SECONDS per throughput and connection-rate figure (default 10)
#
# Environment (all optional):
#   PEERS          peers.sh to use (default: ../shared/bench/peers.sh next to this repository)
#   BENCH_RUN_DIR  scratch directory: pid files, logs, configs, results (default: peers.sh's own,
#                  /tmp/egress-bench-peers, where 'peers.sh install' puts Envoy)
#   BENCH_PROFILE  cargo profile to build and run, release (default) or debug
#   BENCH_ONLY     space-separated subset of: direct haproxy-tcp nginx-stream envoy-tcp squid
#                  envoy-connect egress-gateway (default: all)
#   CONCURRENCY    connection-rate workers (default 50)
#   IDLE_COUNT     tunnels held open for the idle-memory figure (default 2000)
#   SOURCES        client source addresses 127.0.0.1..127.0.0.N for connection rate and idle (default
#                  16): loopback connect() reuses a port only once its TIME_WAIT is ~1 s old, which
#                  caps a single source address near 14k connections/s, below what the proxies do
#   MTLS           1: after the table, also measure the mTLS handshake rate (egress-bench mtls-rate,
#                  CONCURRENCY workers, SOURCES sources, SECONDS) of nginx-upstream's mTLS terminator
#                  (9106, GET /) and of egress-gateway's TLS listener proxy-mtls (9201, CONNECT to the
#                  echo upstream + 64-byte echo), with the server's CPU per handshake; only: just
#                  that (BENCH_ONLY is ignored). Unset or 0: not measured (the default). Certificates
#                  are peers.sh's (BENCH_CERTS, default BENCH_RUN_DIR/certs), made if missing.
#
# Pinning (2 cores): every proxy runs on CPU 0 (peers.sh and this script use taskset -c 0); the
# client and the echo/discard upstreams run on CPU 1. Only ratios from one run mean anything.
#
# Ports (127.0.0.1): echo upstream 9000, discard upstream 9001 (egress-bench upstreams);
#   haproxy-tcp 9107 echo / 9109 discard, nginx-stream 9108 / 9110, envoy-tcp 9112 / 9113,
#   squid CONNECT 9103, envoy-connect CONNECT 9114, egress-gateway CONNECT 9200 (admin 9901);
#   with MTLS: nginx-upstream mTLS terminator 9106 (its TLS upstream 9443 starts too), egress-gateway
#   TLS (mTLS) CONNECT listener proxy-mtls 9201.
# What the peers allow (read from ../shared/bench/conf): squid.conf allows CONNECT to 127.0.0.1
#   ports 5201 9443 9000 9001; envoy-connect.conf routes the authorities 127.0.0.1:9000 (echo) and
#   127.0.0.1:9001 (sink). The CONNECT clients therefore ask for 127.0.0.1:9001 (throughput) and
#   127.0.0.1:9000 (connection rate, idle). Should a squid.conf lack 9000/9001, this script runs
#   peers.sh from a copy under BENCH_RUN_DIR with those ports added (shared/ stays untouched).
set -euo pipefail

secs=${1:-10}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
[ "$secs" -ge 1 ] && [ "$secs" -le 3600 ] || { echo "$0: SECONDS must be 1..3600" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$repo/../shared/bench/peers.sh}
[ -f "$peers" ] || { echo "$0: no peers.sh at $peers (set PEERS)" >&2; exit 2; }
peers=$(cd "$(dirname "$peers")" && pwd)/$(basename "$peers")
export BENCH_RUN_DIR=${BENCH_RUN_DIR:-/tmp/egress-bench-peers}
run=$BENCH_RUN_DIR
mkdir -p "$run"
profile=${BENCH_PROFILE:-release}
concurrency=${CONCURRENCY:-50}
idle_count=${IDLE_COUNT:-2000}
sources=${SOURCES:-16}
only=${BENCH_ONLY:-direct haproxy-tcp nginx-stream envoy-tcp squid envoy-connect egress-gateway}
mtls=${MTLS:-0}
case $mtls in
  0 | 1) ;;
  only) only="" ;;
  *) echo "$0: MTLS must be 1, only or 0" >&2; exit 2 ;;
esac
# peers.sh's certificates (peers.sh reads BENCH_CERTS too); only the mTLS section uses them.
certs=${BENCH_CERTS:-$run/certs}
clientlog=$run/egress-bench-client.log
: >"$clientlog"

# Proxies hold two descriptors per tunnel; the gateway inherits this limit (peers.sh sets its own).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
selected() { case " $only " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# ---- build -------------------------------------------------------------------------------------
cd "$repo"
pkgs=(-p egress-bench)
selected egress-gateway && pkgs=(-p egress-gateway -p egress-bench)
[ "$mtls" = 0 ] || pkgs=(-p egress-gateway -p egress-bench)
case $profile in
  release) cargo build --release "${pkgs[@]}"; bin=$repo/target/release ;;
  debug) cargo build "${pkgs[@]}"; bin=$repo/target/debug ;;
  *) die "BENCH_PROFILE must be release or debug" ;;
esac
client() { taskset -c 1 "$bin/egress-bench" "$@" 2>>"$clientlog"; }

# ---- peers: install if missing, check what they allow ------------------------------------------
missing=""
for c in haproxy nginx squid; do command -v "$c" >/dev/null || missing="$missing $c"; done
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$missing nginx-stream-module"
[ -x "$(envoy_bin)" ] || missing="$missing envoy"
if [ -n "$missing" ]; then
  log "missing:$missing; running $peers install"
  "$peers" install
fi
conf=$(dirname "$peers")/conf
if ! grep -Eq '^acl ports_ok port( .*)? 9000( |$)' "$conf/squid.conf" \
  || ! grep -Eq '^acl ports_ok port( .*)? 9001( |$)' "$conf/squid.conf"; then
  # squid would answer 403 to CONNECT 127.0.0.1:9000/9001: run peers.sh from a patched copy.
  log "squid.conf does not allow ports 9000 9001; using a patched copy in $run/peers-copy"
  rm -rf "$run/peers-copy"; mkdir -p "$run/peers-copy"
  cp -r "$(dirname "$peers")/." "$run/peers-copy/"
  sed -i -E 's/^(acl ports_ok port .*)$/\1 9000 9001/' "$run/peers-copy/conf/squid.conf"
  peers=$run/peers-copy/$(basename "$peers")
fi
grep -q '"127.0.0.1:9000"' "$conf/envoy-connect.conf" && grep -q '"127.0.0.1:9001"' "$conf/envoy-connect.conf" \
  || log "warning: envoy-connect.conf does not route 127.0.0.1:9000/9001; its figures will be errors"

# ---- process bookkeeping -----------------------------------------------------------------------
up_pid="" gw_pid="" cur_peer=""
ports_free() { # port...: none of them has a listener yet (a stale peer would be measured instead)
  local p; for p in "$@"; do listening "$p" && { log "127.0.0.1:$p is already in use"; return 1; }; done; return 0
}
stop_cur_peer() {
  [ -n "$cur_peer" ] || return 0
  local pf=$run/$cur_peer.pid pid=""
  [ -f "$pf" ] && pid=$(cat "$pf")
  "$peers" stop "$cur_peer" || true
  [ -z "$pid" ] || wait_gone "$pid" 15 || { log "$cur_peer ($pid) still running; killing"; kill -KILL "$pid" 2>/dev/null || true; }
  cur_peer=""
}
tw_saved=""
cleanup() {
  stop_cur_peer; stop_gateway
  [ -z "$tw_saved" ] || sysctl -qw "net.ipv4.tcp_max_tw_buckets=$tw_saved" || true
  if [ -n "$up_pid" ]; then kill -TERM "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# TIME_WAIT: every connection-rate cycle leaves a loopback socket in TIME_WAIT, on the side that
# closed first, and a proxy closes its upstream connection first (it passes on the client's FIN).
# While the kernel's TIME_WAIT table has room, connect() reuses a local port towards the same
# upstream only once its TIME_WAIT is about a second old: that caps every proxy near 14k new
# upstream connections/s from 127.0.0.1, and burns its CPU in the port search. Whether the table
# is full (new entries dropped) when a path runs depends on the paths before it, so the figures
# would depend on the order. As root, the script keeps no TIME_WAIT sockets during the run
# (net.ipv4.tcp_max_tw_buckets=0, restored at exit): the same condition for every path, and the
# figures show each proxy's own cost. Without root, it warns and measures as the table happens to be.
if [ "$(id -u)" = 0 ] && tw_now=$(sysctl -n net.ipv4.tcp_max_tw_buckets 2>/dev/null); then
  tw_saved=$tw_now
  sysctl -qw net.ipv4.tcp_max_tw_buckets=0 || { tw_saved=""; log "could not set net.ipv4.tcp_max_tw_buckets; connection rates depend on the TIME_WAIT table"; }
else
  log "not root: TIME_WAIT sockets are kept, and connection rates depend on the TIME_WAIT table's state (see docs/benchmarks.md)"
fi

# ---- upstreams ---------------------------------------------------------------------------------
ports_free 9000 9001 || die "stop whatever listens there (a previous run?) and retry"
taskset -c 1 "$bin/egress-bench" upstreams --echo 127.0.0.1:9000 --discard 127.0.0.1:9001 \
  2>"$run/upstreams.log" &
up_pid=$!
wait_port 9000 10 && wait_port 9001 10 || { cat "$run/upstreams.log" >&2; die "upstreams did not start"; }

# ---- the gateway's config ----------------------------------------------------------------------
write_gateway_config() { # [mtls]: also the TLS listener proxy-mtls on 9201 and a SPIFFE rule
  local with_mtls=${1:-}
  {
    cat <<'EOF'
version: 1
mode: enforce
default: deny
rules:
EOF
    # First in the file, so that the audit names it for the mTLS caller (the loopback rule below
    # admits that caller too; rule order never changes allow versus deny).
    [ "$with_mtls" != mtls ] || cat <<'EOF'
  - name: bench-mtls-client
    action: allow
    from:
      - spiffe: spiffe://bench.test/ns/bench/sa/client
    to:
      - cidr: 127.0.0.1/32
        ports: [9000]
EOF
    cat <<'EOF'
  - name: bench-loopback
    action: allow
    from:
      - cidr: 127.0.0.0/8
    to:
      # A cidr entry is also what lets the address guard dial 127.0.0.1 (blocked by default).
      - cidr: 127.0.0.1/32
        ports: [9000, 9001]
EOF
  } >"$run/gateway-policy.yaml"
  {
    cat <<EOF
listeners:
  - name: bench
    kind: connect
    address: 127.0.0.1:9200
EOF
    # peers.sh's server certificate (DNS upstream.test, localhost, IP 127.0.0.1) and CA; the
    # client's certificate (URI spiffe://bench.test/ns/bench/sa/client) chains to that CA.
    [ "$with_mtls" != mtls ] || cat <<EOF
  - name: proxy-mtls
    kind: connect
    address: 127.0.0.1:9201
    tls:
      cert: $certs/server.crt
      key: $certs/server.key
      clientCa: [$certs/ca.crt]
      clientAuth: required
EOF
    cat <<EOF
policy:
  path: $run/gateway-policy.yaml
limits:
  maxConnections: 1000000
admin:
  address: 127.0.0.1:9901
log:
  format: text
  level: warn
EOF
  } >"$run/gateway.yaml"
}

# ---- measurements ------------------------------------------------------------------------------
declare -A THR RATE ERRS P50 P99 IDLE VIA

measure() { # name via discard-port echo-port pid-or-empty
  local name=$1 via=$2 dport=$3 eport=$4 pid=$5 out
  local thr_to=() echo_to=()
  if [ "$via" = connect ]; then thr_to=(--connect-to 127.0.0.1:9001); echo_to=(--connect-to 127.0.0.1:9000); fi
  VIA[$name]=$via
  echo "== $name" >>"$clientlog"
  if out=$(client throughput --target "127.0.0.1:$dport" --via "$via" "${thr_to[@]}" --seconds "$secs" --label "$name"); then
    THR[$name]=$(field "$out" 3)
  else THR[$name]=n/a; log "$name: throughput failed (see $clientlog)"; fi
  log "$name: throughput ${THR[$name]} Gbit/s"
  sleep 1
  if out=$(client connrate --target "127.0.0.1:$eport" --via "$via" "${echo_to[@]}" \
    --concurrency "$concurrency" --sources "$sources" --seconds "$secs" --label "$name"); then
    RATE[$name]=$(field "$out" 3); ERRS[$name]=$(field "$out" 6)
    P50[$name]=$(field "$out" 8); P99[$name]=$(field "$out" 10)
  else RATE[$name]=n/a; ERRS[$name]=n/a; P50[$name]=n/a; P99[$name]=n/a; log "$name: connrate failed (see $clientlog)"; fi
  log "$name: ${RATE[$name]} conn/s, errors ${ERRS[$name]}, p50 ${P50[$name]} us, p99 ${P99[$name]} us"
  sleep 1
  IDLE[$name]=n/a
  if [ -n "$pid" ]; then
    if out=$(client idle --target "127.0.0.1:$eport" --via "$via" "${echo_to[@]}" --count "$idle_count" \
      --sources "$sources" --pid "$pid" --label "$name"); then
      IDLE[$name]=$(field "$out" 3)
    else log "$name: idle failed (see $clientlog)"; fi
    log "$name: idle ${IDLE[$name]} B/tunnel"
  fi
}

peer() { # name via discard-port echo-port
  local name=$1 pid
  ports_free "$3" "$4" || { log "$name: skipped"; return 0; }
  cur_peer=$name
  "$peers" start "$name" >/dev/null || { log "$name did not start"; cur_peer=""; return 0; }
  wait_port "$3" 20 && wait_port "$4" 20 || { log "$name does not listen"; stop_cur_peer; return 0; }
  pid=$(cat "$run/$name.pid")
  # nginx runs a master and one worker: the worker holds the connections.
  case $name in nginx-*) pid=$(pgrep -P "$pid" | head -1 || true) ;; esac
  measure "$@" "$pid"
  stop_cur_peer
}

for name in $only; do
  case $name in
    direct) measure direct tcp 9001 9000 "" ;;
    haproxy-tcp) peer haproxy-tcp tcp 9109 9107 ;;
    nginx-stream) peer nginx-stream tcp 9110 9108 ;;
    envoy-tcp) peer envoy-tcp tcp 9113 9112 ;;
    squid) peer squid connect 9103 9103 ;;
    envoy-connect) peer envoy-connect connect 9114 9114 ;;
    egress-gateway)
      ports_free 9200 9901 || { log "egress-gateway: skipped"; continue; }
      write_gateway_config
      taskset -c 0 "$bin/egress-gateway" run --config "$run/gateway.yaml" \
        >/dev/null 2>"$run/egress-gateway.log" &
      gw_pid=$!
      if wait_port 9200 20; then
        measure egress-gateway connect 9200 9200 "$gw_pid"
      else
        log "egress-gateway does not listen on 9200:"; cat "$run/egress-gateway.log" >&2
      fi
      stop_gateway
      ;;
    *) die "unknown path '$name' in BENCH_ONLY" ;;
  esac
done

# ---- the table ---------------------------------------------------------------------------------
if [ "$mtls" != only ]; then
num() { [[ ${1:-} =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; }
ratio() { # a b
  if num "${1:-}" && num "${2:-}" && awk -v b="$2" 'BEGIN{exit !(b != 0)}'; then
    awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'
  else echo "—"; fi
}
show() { local v=${1:-}; [ -n "$v" ] && [ "$v" != n/a ] && echo "$v" || echo "—"; }

{
  echo "### egress-bench, $(date -u +%Y-%m-%dT%H:%MZ), ${secs} s per figure, profile $profile"
  echo
  echo "Machine: $(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1);" \
    "proxy on CPU 0, client and upstreams on CPU 1; commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo
  echo "| path | via | throughput (Gbit/s) | connections/s (c=$concurrency, $sources sources) | errors | p50 (µs) | p99 (µs) | idle (B/tunnel, n=$idle_count) |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for n in $only; do
    [ -n "${VIA[$n]:-}" ] || continue
    echo "| $n | ${VIA[$n]} | $(show "${THR[$n]:-}") | $(show "${RATE[$n]:-}") | $(show "${ERRS[$n]:-}") | $(show "${P50[$n]:-}") | $(show "${P99[$n]:-}") | $(show "${IDLE[$n]:-}") |"
  done
  echo
  echo "Ratios (row ÷ reference; throughput and conn/s: higher is better, idle memory: lower is better):"
  echo
  echo "| path | thr ÷ direct | thr ÷ haproxy-tcp | thr ÷ envoy-tcp | thr ÷ envoy-connect | conn/s ÷ squid | conn/s ÷ envoy-connect | idle ÷ envoy-connect | idle ÷ squid |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for n in $only; do
    [ -n "${VIA[$n]:-}" ] || continue
    t=${THR[$n]:-} r=${RATE[$n]:-} i=${IDLE[$n]:-}
    echo "| $n | $(ratio "$t" "${THR[direct]:-}") | $(ratio "$t" "${THR[haproxy-tcp]:-}") | $(ratio "$t" "${THR[envoy-tcp]:-}") | $(ratio "$t" "${THR[envoy-connect]:-}") | $(ratio "$r" "${RATE[squid]:-}") | $(ratio "$r" "${RATE[envoy-connect]:-}") | $(ratio "$i" "${IDLE[envoy-connect]:-}") | $(ratio "$i" "${IDLE[squid]:-}") |"
  done
} | tee "$run/results.md"
log "table saved to $run/results.md; client details in $clientlog"
fi

# ---- mTLS handshake rate (MTLS=1 or MTLS=only) ---------------------------------------------------
# egress-bench mtls-rate: every cycle is a TCP connect, a full TLS 1.3 handshake with the client
# certificate (the client disables resumption), one small exchange and close_notify. Paths:
#   nginx-upstream  mode http:    nginx's mTLS terminator on 9106 (ssl_verify_client on), GET / -> 200
#   egress-gateway  mode connect: the gateway's TLS listener proxy-mtls on 9201, CONNECT
#                   127.0.0.1:9000 (allowed by the rule for the client's SPIFFE ID), 64-byte echo
# Both use peers.sh's certificates ($certs: ca.crt, server.crt/key for the servers, client.crt/key
# with URI SAN spiffe://bench.test/ns/bench/sa/client); the server certificate names localhost,
# hence --server-name localhost.
# Envoy: ../shared/bench/conf has no Envoy configuration that terminates mTLS (envoy-tcp and
# envoy-connect are plaintext), so Envoy is not measured here.
# Server CPU: utime+stime of the server's processes from /proc/PID/stat (all threads; for nginx,
# master and worker) before and after the client run, divided by the handshakes completed. It
# includes the exchange (for the gateway: CONNECT, policy, upstream dial and relay).
if [ "$mtls" != 0 ]; then
  declare -A MRATE MERRS MP50 MP99 MCPU MMODE
  mtls_order=()
  clk_tck=$(getconf CLK_TCK)
  mtls_measure() { # name mode port pid... (the server's processes; none: no CPU figure)
    local name=$1 mode=$2 port=$3 out c0="" c1="" to=()
    shift 3
    [ "$mode" != connect ] || to=(--connect-to 127.0.0.1:9000)
    mtls_order+=("$name"); MMODE[$name]=$mode; MCPU[$name]=n/a
    echo "== mtls $name" >>"$clientlog"
    [ $# -eq 0 ] || c0=$(cpu_ticks "$@") || c0=""
    if out=$(client mtls-rate --target "127.0.0.1:$port" --mode "$mode" "${to[@]}" \
      --ca "$certs/ca.crt" --cert "$certs/client.crt" --key "$certs/client.key" --server-name localhost \
      --concurrency "$concurrency" --sources "$sources" --seconds "$secs" --label "$name"); then
      MRATE[$name]=$(field "$out" 3); MERRS[$name]=$(field "$out" 6)
      MP50[$name]=$(field "$out" 8); MP99[$name]=$(field "$out" 10)
    else MRATE[$name]=n/a; MERRS[$name]=n/a; MP50[$name]=n/a; MP99[$name]=n/a; log "$name: mtls-rate failed (see $clientlog)"; fi
    [ $# -eq 0 ] || c1=$(cpu_ticks "$@") || c1=""
    if [ -n "$c0" ] && [ -n "$c1" ] && [ "${MRATE[$name]}" != n/a ]; then
      MCPU[$name]=$(awk -v d=$((c1 - c0)) -v hz="$clk_tck" -v r="${MRATE[$name]}" -v s="$secs" \
        'BEGIN { if (r * s > 0) printf "%.3f", d * 1000 / hz / (r * s); else print "n/a" }')
    fi
    log "$name (mTLS, $mode): ${MRATE[$name]} hs/s, errors ${MERRS[$name]}, p50 ${MP50[$name]} us," \
      "p99 ${MP99[$name]} us, server CPU ${MCPU[$name]} ms/handshake"
  }

  certs_ok() {
    local f
    for f in ca server client; do
      [ -f "$certs/$f.crt" ] && [ -f "$certs/$f.key" ] || return 1
      openssl x509 -checkend 3600 -noout -in "$certs/$f.crt" >/dev/null 2>&1 || return 1
    done
  }
  if ! certs_ok; then
    log "making peers.sh certificates in $certs (missing or expiring within an hour)"
    "$peers" certs "$certs" >/dev/null
    certs_ok || die "no usable certificates in $certs"
  fi

  # nginx-upstream: 9443 (the TLS upstream, unused here) and 9106 (the mTLS terminator), one worker.
  if ports_free 9443 9106; then
    cur_peer=nginx-upstream
    if BENCH_CERTS=$certs "$peers" start nginx-upstream >/dev/null; then
      if wait_port 9106 20; then
        master=$(cat "$run/nginx-upstream.pid")
        mapfile -t nginx_pids < <(echo "$master"; pgrep -P "$master" || true)
        mtls_measure nginx-upstream http 9106 "${nginx_pids[@]}"
      else log "nginx-upstream does not listen on 9106"; fi
      stop_cur_peer
    else log "nginx-upstream did not start"; cur_peer=""; fi
  else log "nginx-upstream: skipped"; fi
  sleep 1

  # egress-gateway: the plain listener on 9200 as usual, plus proxy-mtls on 9201.
  if ports_free 9200 9201 9901; then
    write_gateway_config mtls
    taskset -c 0 "$bin/egress-gateway" run --config "$run/gateway.yaml" \
      >/dev/null 2>"$run/egress-gateway-mtls.log" &
    gw_pid=$!
    if wait_port 9201 20; then
      mtls_measure egress-gateway connect 9201 "$gw_pid"
    else
      log "egress-gateway does not listen on 9201:"; cat "$run/egress-gateway-mtls.log" >&2
    fi
    stop_gateway
  else log "egress-gateway (mTLS): skipped"; fi

  mshow() { local v=${1:-}; [ -n "$v" ] && [ "$v" != n/a ] && echo "$v" || echo "—"; }
  {
    echo
    echo "### mTLS handshake rate, $(date -u +%Y-%m-%dT%H:%MZ), ${secs} s per figure, profile $profile"
    echo
    echo "Full TLS 1.3 handshakes with a client certificate (ECDSA P-256, no resumption), c=$concurrency," \
      "$sources sources; server on CPU 0, client on CPU 1. Server CPU: utime+stime of the server's" \
      "processes per handshake, exchange included. Envoy: no mTLS configuration in shared/bench/conf."
    echo
    echo "| path | exchange | handshakes/s | errors | p50 (µs) | p99 (µs) | server CPU (ms/handshake) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for n in "${mtls_order[@]}"; do
      case ${MMODE[$n]} in connect) x="CONNECT + 64 B echo" ;; *) x="GET / → 200" ;; esac
      echo "| $n | $x | $(mshow "${MRATE[$n]}") | $(mshow "${MERRS[$n]}") | $(mshow "${MP50[$n]}") | $(mshow "${MP99[$n]}") | $(mshow "${MCPU[$n]}") |"
    done
  } | tee "$run/results-mtls.md"
  log "mTLS table saved to $run/results-mtls.md; client details in $clientlog"
fi
