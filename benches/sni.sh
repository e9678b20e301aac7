#!/usr/bin/env bash
# New TLS connections through SNI routers and the gateway's sni and transparent listeners, and
# single-stream throughput through the transparent path: the figures of docs/benchmarks.md's
# "SNI and transparent listeners" section, every path measured by the same client in one run.
#
#   benches/sni.sh [SECONDS]     SECONDS per figure (default 10). Root: it adds (and removes) two
#                                iptables nat OUTPUT rules, limited to traffic it makes, for the
#                                transparent path.
#
# Paths, all to nginx-upstream's TLS 1.3 server on 127.0.0.1:9443 (peers.sh certs, name
# upstream.test): direct; haproxy-sni 9104 (req_ssl_sni); nginx-sni 9105 (ssl_preread), and the
# same nginx with proxy_half_close on (9195, a copy of peers.sh's config);
# egress-gateway sni listener 9202 (upstreamPort 9443); egress-gateway transparent listener 9203,
# reached by connecting to 127.0.0.1:9443 itself while a REDIRECT rule sends the client's
# unmarked connections there (the gateway's own dials carry upstream.mark and are exempt).
# Each cycle: TCP connect, full TLS 1.3 handshake (no resumption) with an X25519MLKEM768-sized key
# share plus X25519 (a ~1.7 KB ClientHello; see benches/src/pq.rs), GET /, 200, close.
# Figures per path: connections/s at CONCURRENCY (default 50) and sequentially (1 worker), p50 of
# the sequential cycles (added latency = path p50 - direct p50), and the proxy's CPU time per
# connection at CONCURRENCY and sequentially (utime+stime of its processes over each run ÷ that
# run's connections; the direct row shows the upstream's own). Throughput: egress-bench throughput to the discard upstream 127.0.0.1:9001,
# direct, through envoy-tcp (9113), and redirected (a REDIRECT rule for the client's connections,
# which carry SO_MARK 0x4000) to the transparent listener and to envoy-tcp: like for like, both
# behind the same iptables rule and connection tracking.
# Pinning: proxies on CPU 0, client and upstreams on CPU 1, as in run.sh.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
bench_args "${1:-}" 10
concurrency=${CONCURRENCY:-50}
sources=${SOURCES:-16}
mark=0x2000
client_mark=0x4000
clientlog=$run/sni-client.log
: >"$clientlog"
ulimit -n 65536 2>/dev/null || true

[ "$(id -u)" = 0 ] || die "needs root for the transparent path's iptables rules"
command -v iptables >/dev/null || die "needs iptables (apt-get install iptables)"
command -v haproxy >/dev/null && command -v nginx >/dev/null || "$peers" install

cd "$repo"
release_build
client() { taskset -c 1 "$bin/egress-bench" "$@" 2>>"$clientlog"; }

rules=()
cleanup() {
  local r
  for r in "${rules[@]}"; do eval "iptables -t nat -D OUTPUT $r" 2>/dev/null || true; done
  stop_all
}
trap cleanup EXIT
trap 'exit 130' INT TERM
redirect() { # port-from port-to mark-match: connections to 127.0.0.1:from that match go to port-to
  local r="-p tcp -d 127.0.0.1 --dport $1 -m mark $3 -j REDIRECT --to-ports $2"
  eval "iptables -t nat -I OUTPUT $r"; rules+=("$r")
}
unredirect() { local r; for r in "${rules[@]}"; do eval "iptables -t nat -D OUTPUT $r" || true; done; rules=(); }

declare -A RATE SEQ P50 CPU CPUC THR
per_conn() { # ticks rate: CPU microseconds per connection over a run of $secs seconds at that rate
  awk -v d="$1" -v hz="$(getconf CLK_TCK)" -v r="$2" -v s="$secs" \
    'BEGIN { if (r + 0 > 0) printf "%.0f", d * 1e6 / hz / (r * s); else print "n/a" }'
}
order=()
tls() { # name target-port pid...: the connection-rate figures of one path
  local name=$1 port=$2 out c0 c1
  shift 2
  order+=("$name")
  echo "== $name" >>"$clientlog"
  local args=(--mode http --ca "$certs/ca.crt" --server-name upstream.test --pq-share
    --target "127.0.0.1:$port" --sources "$sources" --seconds "$secs" --label "$name")
  c0=$(cpu_ticks "$@")
  out=$(client tls-rate "${args[@]}" --concurrency "$concurrency") && RATE[$name]=$(field "$out" 3) || RATE[$name]=n/a
  c1=$(cpu_ticks "$@")
  CPUC[$name]=$(per_conn $((c1 - c0)) "${RATE[$name]}")
  c0=$(cpu_ticks "$@")
  out=$(client tls-rate "${args[@]}" --concurrency 1) || out=""
  c1=$(cpu_ticks "$@")
  SEQ[$name]=$(field "$out" 3); P50[$name]=$(field "$out" 8)
  CPU[$name]=$(per_conn $((c1 - c0)) "${SEQ[$name]}")
  log "$name: ${RATE[$name]} conn/s at c=$concurrency, CPU ${CPUC[$name]} us/conn; sequential ${SEQ[$name]} conn/s, p50 ${P50[$name]} us, CPU ${CPU[$name]} us/conn"
}

# The TLS upstream (nginx-upstream: 9443, one worker) stays up for every path.
start_peer nginx-upstream 9443
upstream_pids=$(peer_pids nginx-upstream)
# shellcheck disable=SC2086
tls direct 9443 $upstream_pids
for p in haproxy-sni:9104 nginx-sni:9105; do
  start_peer "${p%%:*}" "${p#*:}"
  # shellcheck disable=SC2046
  tls "${p%%:*}" "${p#*:}" $(peer_pids "${p%%:*}")
  stop_peer "${p%%:*}"
done
# nginx-sni again with proxy_half_close on, on 9195: it then relays each side's FIN on its own as
# the gateway does, instead of closing both sides at the upstream's FIN. That costs it the
# client's close_notify: one more wake-up, read and send per connection (see docs/benchmarks.md).
sed 's/listen 127.0.0.1:9105; ssl_preread on;/listen 127.0.0.1:9195; ssl_preread on; proxy_half_close on;/; s/nginx-sni\.nginx\.pid/nginx-sni-half-close.pid/' \
  "$run/nginx-sni.conf" >"$run/nginx-sni-half-close.conf"
grep -q 'proxy_half_close on' "$run/nginx-sni-half-close.conf" || die "nginx-sni.conf is not the one sni.sh knows"
listening 9195 && die "127.0.0.1:9195 is already in use (a previous run?)"
taskset -c 0 nginx -e stderr -p "$run" -c "$run/nginx-sni-half-close.conf" -g 'daemon off;' \
  >"$run/nginx-sni-half-close.log" 2>&1 &
hc_pid=$!
bg_pids+=("$hc_pid")
wait_port 9195 20 || die "nginx-sni-half-close does not listen on 9195"
# shellcheck disable=SC2046
tls nginx-sni-half-close 9195 "$hc_pid" $(pgrep -P "$hc_pid")
kill -TERM "$hc_pid"; wait_gone "$hc_pid" 15 || kill -KILL "$hc_pid" 2>/dev/null || true

write_sni_gateway_config "$mark"
start_gateway "$run/sni-gateway.yaml" 9202
tls egress-gateway-sni 9202 "$gw_pid"
redirect 9443 9203 "! --mark $mark"   # all but the gateway's own dials
tls egress-gateway-transparent 9443 "$gw_pid"
unredirect

# Throughput: direct, envoy-tcp, the transparent path.
taskset -c 1 "$bin/egress-bench" upstreams --echo 127.0.0.1:9000 --discard 127.0.0.1:9001 2>"$run/upstreams.log" &
bg_pids+=($!)
wait_port 9001 10 || die "upstreams did not start"
thr() { # name port [client options]
  local name=$1 port=$2 out
  shift 2
  out=$(client throughput --target "127.0.0.1:$port" --seconds "$secs" --label "$name" "$@") && THR[$name]=$(field "$out" 3) || THR[$name]=n/a
  log "$name: ${THR[$name]} Gbit/s"
}
thr direct 9001
# The client's connection to the discard upstream, redirected: to the transparent listener, and to
# Envoy's tcp_proxy behind the same rule (Envoy's own dial to 9001 is unmarked, so not redirected).
redirect 9001 9203 "--mark $client_mark"
thr egress-gateway-transparent 9001 --mark "$client_mark"
unredirect
stop_gateway
if [ -x "$(envoy_bin)" ]; then
  start_peer envoy-tcp 9113
  thr envoy-tcp 9113
  redirect 9001 9113 "--mark $client_mark"
  thr envoy-tcp-redirect 9001 --mark "$client_mark"
  unredirect
  stop_peer envoy-tcp
fi

{
  echo
  echo "### SNI and transparent listeners, $(date -u +%Y-%m-%dT%H:%MZ), ${secs} s per figure, commit $(git -C "$repo" rev-parse --short HEAD)"
  echo
  echo "| path | conn/s (c=$concurrency) | proxy CPU at c=$concurrency (µs/conn) | sequential conn/s | sequential p50 (µs) | added p50 (µs) | proxy CPU, sequential (µs/conn) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for n in "${order[@]}"; do
    added=$(awk -v a="${P50[$n]}" -v d="${P50[direct]}" 'BEGIN { if (a + 0 > 0 && d + 0 > 0) printf "%+.0f", a - d; else print "n/a" }')
    [ "$n" = direct ] && added="—"
    echo "| $n | ${RATE[$n]} | ${CPUC[$n]} | ${SEQ[$n]} | ${P50[$n]} | $added | ${CPU[$n]}$([ "$n" = direct ] && echo ' (upstream)') |"
  done
  echo
  echo "| single-stream throughput | Gbit/s |"
  echo "| --- | ---: |"
  for n in direct envoy-tcp envoy-tcp-redirect egress-gateway-transparent; do echo "| $n | ${THR[$n]:-n/a} |"; done
} | tee "$run/results-sni.md"
