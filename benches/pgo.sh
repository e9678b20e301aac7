#!/usr/bin/env bash
# An experiment, not the shipped build: does a profile-guided (PGO) build of the gateway need less
# CPU per connection than the release build?
#
#   benches/pgo.sh [ROUNDS] [SECONDS]    as root; ROUNDS alternating rounds (default 7) of SECONDS
#                                        (default 4) per build and per client
#
# 1. Builds the gateway instrumented (-Cprofile-generate, target dir target/pgo-gen).
# 2. Trains it with a mixed load that is not the measurement: CONNECT tunnels through a connect
#    listener to an echo upstream (50 workers), and TLS through the sni listener (one worker, then
#    50), 5 s each.
# 3. Merges the profile with llvm-profdata (apt-get install llvm-19 if there is none; it reads the
#    raw profiles of this rustc) and builds the gateway with it (-Cprofile-use, target/pgo-use).
# 4. Measures the release build, the PGO build and nginx-sni side by side (benches/compare.sh):
#    all three run at once on CPU 0, the client on CPU 1 visits them in turn, ROUNDS times.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$repo/benches/lib.sh"
rounds=${1:-7}
bench_args "${2:-}" 4
[ "$(id -u)" = 0 ] || die "needs root: the gateway's config sets upstream.mark"
command -v nginx >/dev/null || "$peers" install
cd "$repo"
release_build

# The newest llvm-profdata there is: an old one cannot read a newer rustc's raw profiles.
newest_profdata() { ls /usr/lib/llvm-*/bin/llvm-profdata 2>/dev/null | sort -V | tail -1; }
profdata=$(newest_profdata)
case $profdata in
  */llvm-1[0-8]/* | "")
    log "installing llvm-19 for llvm-profdata"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19 >/dev/null
    profdata=$(newest_profdata) ;;
esac

no_time_wait_until_exit

profiles=$run/pgo-profiles
rm -rf "$profiles" && mkdir -p "$profiles"
log "instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$profiles/build" cargo build --release -q -p egress-gateway --target-dir target/pgo-gen

listening 9443 || start_peer nginx-upstream 9443
write_sni_gateway_config 0x2000
for p in 9000 9001 9204 9301 9302; do ! listening "$p" || die "127.0.0.1:$p is in use (a previous run?)"; done
taskset -c 1 "$bin/egress-bench" upstreams --echo 127.0.0.1:9000 --discard 127.0.0.1:9001 >/dev/null 2>&1 &
pids+=($!)
wait_port 9000 10
# Training: sni.sh's config plus a connect listener whose policy allows the echo upstream.
sed -e "s|^listeners:|listeners:\n  - {name: train-connect, kind: connect, address: \"127.0.0.1:9204\"}|" \
  "$run/sni-gateway.yaml" >"$run/pgo-train.yaml"
sed -i -e 's|        ports: \[9001\]|        ports: [9000, 9001]|' "$run/sni-policy.yaml"
LLVM_PROFILE_FILE="$profiles/gateway-%p-%m.profraw" taskset -c 0 target/pgo-gen/release/egress-gateway \
  run --config "$run/pgo-train.yaml" >/dev/null 2>"$run/pgo-train.log" &
train=$!
pids+=("$train")
wait_port 9202 30
log "training"
taskset -c 1 "$bin/egress-bench" connrate --target 127.0.0.1:9204 --via connect --connect-to 127.0.0.1:9000 \
  --concurrency 50 --sources 16 --seconds 5 --label train-connect >/dev/null 2>&1
for c in 1 50; do
  taskset -c 1 "$bin/egress-bench" tls-rate --mode http --ca "$certs/ca.crt" --server-name upstream.test \
    --pq-share --target 127.0.0.1:9202 --sources 16 --seconds 5 --concurrency "$c" --label train-sni >/dev/null 2>&1
done
kill -INT "$train"; wait "$train" || true
"$profdata" merge -o "$profiles/gateway.profdata" "$profiles"/gateway-*.profraw \
  || die "$profdata cannot read this rustc's profiles ($(rustc -vV | grep LLVM)): install a newer llvm"
log "PGO build (target/pgo-use)"
RUSTFLAGS="-Cprofile-use=$profiles/gateway.profdata" cargo build --release -q -p egress-gateway --target-dir target/pgo-use
# Measurement: compare.sh runs nginx-sni, the release build and the PGO build side by side.
cleanup
trap - EXIT
"$repo/benches/compare.sh" "$rounds" "$secs" release=target/release/egress-gateway \
  pgo-use=target/pgo-use/release/egress-gateway
