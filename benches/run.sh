#!/usr/bin/env bash
# One command for the proxy comparison table: direct / kennel / Tinyproxy / Squid, all on
# loopback, the proxy under test pinned to one CPU and load generator + origin to another.
#
#   benches/run.sh                      # writes the table into benches/README.md
#   KENNEL_BEFORE=/path/to/old/kennel-proxy benches/run.sh   # adds a "kennel (before)" column
#   RUNS=1 benches/run.sh               # one run per cell instead of the median of 3
#
# Bounded: every load run is bounded by count and time inside `loadgen` (and by `timeout`
# here); the whole run takes about 4-6 minutes on a 2-core machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
O=29601 K=29602 SQ=29603 TP=29604 KB=29605 # origin, kennel, squid, tinyproxy, kennel-before

echo "== build" >&2
cargo build --release -q -p kennel-proxy --bin kennel-proxy -p kennel-benches --bin loadgen
BIN=$ROOT/target/release/kennel-proxy
LG=$ROOT/target/release/loadgen

echo "== packages" >&2
missing=()
command -v squid >/dev/null || [ -x /usr/sbin/squid ] || missing+=(squid)
command -v tinyproxy >/dev/null || [ -x /usr/bin/tinyproxy ] || missing+=(tinyproxy)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
SQUID=$(command -v squid || echo /usr/sbin/squid)
TINY=$(command -v tinyproxy || echo /usr/bin/tinyproxy)

# 10,000 idle tunnels need 20,000+ descriptors in the proxy and in the load generator.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
# Without CAP_SYS_RESOURCE the hard limit cannot be raised: hold as many as fit (the proxy
# needs two descriptors per tunnel, plus its pipe pool and listeners).
BIG=$(( $(ulimit -n) / 2 - 400 ))
[ "$BIG" -gt 10000 ] && BIG=10000

D=$(mktemp -d /tmp/kennel-bench.XXXXXX)
chmod 755 "$D"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT

wait_port() { # port
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

echo "== origin" >&2
taskset -c "$LOAD_CPU" "$LG" origin $O &
PIDS+=($!)
wait_port $O

# --- kennel: the release binary, its default config except: loopback listen, access log off,
# a static hosts map, the connection cap raised for the 10,000-tunnel case. The allowlist is
# the origin's address and port (cidrs), like Squid's and Tinyproxy's below.
kennel_conf() { # name port buffer_bytes
    cat >"$D/$1-policy.toml" <<EOF
[defaults]
ports = [$O]
[allow]
cidrs = ["127.0.0.1/32"]
EOF
    cat >"$D/$1.toml" <<EOF
listen = ["127.0.0.1:$2"]
admin = "127.0.0.1:0"
[policy]
file = "$D/$1-policy.toml"
watch = false
[access_log]
destination = "off"
[resolver]
static_only = true
[limits]
max_connections = 30000
buffer_bytes = $3
EOF
}
start_kennel() { # name port buffer_bytes binary
    kennel_conf "$1" "$2" "$3"
    taskset -c "$PROXY_CPU" "$4" --config "$D/$1.toml" >"$D/$1.out" 2>&1 &
    PIDS+=($!)
    LAST=$!
    wait_port "$2"
}

# --- Squid: one process (-N), no cache, no access log, CONNECT and GET allowed to the origin
# only. `dstdomain -n` matches the IP literal without a reverse lookup; DNS (if Squid wanted
# any) goes to loopback.
cat >"$D/squid.conf" <<EOF
http_port 127.0.0.1:$SQ
acl origin dstdomain -n 127.0.0.1
acl oport port $O
http_access allow origin oport
http_access deny all
access_log none
cache_store_log none
cache deny all
cache_mem 0 MB
dns_nameservers 127.0.0.1
visible_hostname bench
pid_filename $D/squid.pid
cache_log $D/squid-cache.log
coredump_dir $D
max_filedescriptors 65536
shutdown_lifetime 0 seconds
client_persistent_connections on
server_persistent_connections on
EOF
chmod 644 "$D/squid.conf"

# --- Tinyproxy: the same allowlist as a filter (deny by default), no log file, enough clients.
printf '^127\\.0\\.0\\.1$\n' >"$D/tiny-filter"
cat >"$D/tinyproxy.conf" <<EOF
Port $TP
Listen 127.0.0.1
Timeout 600
MaxClients 12000
LogLevel Critical
Filter "$D/tiny-filter"
FilterType ere
FilterDefaultDeny Yes
ConnectPort $O
PidFile "$D/tinyproxy.pid"
EOF

LOAD="load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
RESULTS=$D/results.tsv
: >"$RESULTS"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

measure() { # target scenario loadgen-args...
    local target=$1 scenario=$2
    shift 2
    local vals=() cpus=() out
    for _ in $(seq 1 "$RUNS"); do
        if out=$(RUST_BACKTRACE=0 timeout 150 taskset -c "$LOAD_CPU" "$LG" "$@" 2>"$D/lg.err"); then
            vals+=("$(echo "$out" | awk '{print $1}')")
            # download runs also print the proxy's CPU seconds per GiB
            [[ $out == *cpu-s/GiB* ]] && cpus+=("$(echo "$out" | awk '{print $3}')")
        else
            echo "  $target $scenario failed: $(grep -m1 Error "$D/lg.err")" >&2
        fi
    done
    record "$target" "$scenario" "${vals[@]}"
    [ ${#cpus[@]} -gt 0 ] && record "$target" "${scenario}_cpu" "${cpus[@]}"
    return 0
}

record() { # target scenario values...
    local target=$1 scenario=$2 m="-"
    shift 2
    [ $# -gt 0 ] && m=$(printf '%s\n' "$@" | median)
    echo "  $target $scenario: $m (runs: ${*:-none})" >&2
    printf '%s\t%s\t%s\t%s\n' "$target" "$scenario" "$m" "${*:-}" >>"$RESULTS"
}

scenarios() { # target [proxy-port pids]
    local target=$1 via=() pids=${3:-}
    [ -n "${2:-}" ] && via=(--proxy "$2")
    local cpu=()
    [ -n "$pids" ] && cpu=(--pids "$pids")
    measure "$target" dl1 download --origin $O "${via[@]}" --conns 1 --bytes 1G "${cpu[@]}"
    measure "$target" dl8 download --origin $O "${via[@]}" --conns 8 --bytes 128M "${cpu[@]}"
    measure "$target" tunnel_rate tunnel-rate --origin $O "${via[@]}" --clients 16 --secs 2
    [ -z "${2:-}" ] && return 0
    measure "$target" forward_rate forward-rate --origin $O "${via[@]}" --clients 16 --secs 2
    measure "$target" denied_rate denied-rate "${via[@]}" --clients 16 --secs 2
    RUNS=1 measure "$target" idle1k idle --origin $O "${via[@]}" --tunnels 1000 --pids "$pids"
}

echo "== direct" >&2
scenarios direct

echo "== kennel" >&2
start_kennel kennel $K 65536 "$BIN"
KPID=$LAST
scenarios kennel $K $KPID
RUNS=1 measure kennel idle10k idle --origin $O --proxy $K --tunnels $BIG --pids $KPID
kill $KPID; wait $KPID 2>/dev/null || true

for size in 262144 1048576; do
    echo "== kennel, pipe/buffer $size" >&2
    start_kennel "kennel-$size" $K $size "$BIN"
    measure "kennel-$size" dl1 download --origin $O --proxy $K --conns 1 --bytes 1G --pids $LAST
    measure "kennel-$size" dl8 download --origin $O --proxy $K --conns 8 --bytes 128M --pids $LAST
    kill $LAST; wait $LAST 2>/dev/null || true
done

if [ -n "${KENNEL_BEFORE:-}" ]; then
    echo "== kennel before ($KENNEL_BEFORE)" >&2
    start_kennel kennel-before $KB 65536 "$KENNEL_BEFORE"
    scenarios kennel-before $KB $LAST
    RUNS=1 measure kennel-before idle10k idle --origin $O --proxy $KB --tunnels $BIG --pids $LAST
    kill $LAST; wait $LAST 2>/dev/null || true
fi

echo "== tinyproxy" >&2
taskset -c "$PROXY_CPU" "$TINY" -d -c "$D/tinyproxy.conf" >"$D/tinyproxy.out" 2>&1 &
TPID=$!
PIDS+=($TPID)
wait_port $TP
scenarios tinyproxy $TP $TPID
kill $TPID; wait $TPID 2>/dev/null || true

echo "== squid" >&2
taskset -c "$PROXY_CPU" "$SQUID" -N -f "$D/squid.conf" >"$D/squid.out" 2>&1 &
SPID=$!
PIDS+=($SPID)
wait_port $SQ
scenarios squid $SQ $SPID
kill $SPID; wait $SPID 2>/dev/null || true

echo "== report" >&2
MACHINE="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
MACHINE+=" $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
VERSIONS="kennel $(git rev-parse --short HEAD), $("$SQUID" -v | head -1 | sed 's/ Cache: Version//'), $("$TINY" -v 2>&1 | head -1)"
python3 "$ROOT/benches/report.py" "$RESULTS" "$ROOT/benches/README.md" \
    "$(date -u +%Y-%m-%d\ %H:%M\ UTC)" "$MACHINE" "$VERSIONS" "$RUNS" "$LOAD" "$BIG"
cp "$RESULTS" "$ROOT/benches/last-run.tsv"
echo "written to benches/README.md (raw values: benches/last-run.tsv)" >&2
