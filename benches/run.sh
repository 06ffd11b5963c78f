#!/usr/bin/env bash
# One command for the proxy comparison table: direct / kennel / Tinyproxy / Squid, all on
# loopback, the proxy under test pinned to one CPU and load generator + origin to another.
#
#   benches/run.sh                      # writes the table into benches/README.md
#   KENNEL_BEFORE=/path/to/old/kennel-proxy benches/run.sh   # adds a "kennel (before)" column
#   RUNS=1 benches/run.sh               # one run per cell instead of the median of 3
#
# Needs: cargo, taskset (util-linux), python3 (writes the table), apt-get only if Squid or
# Tinyproxy is missing. Run as root for apt-get and for >10,000 descriptors (without
# CAP_SYS_RESOURCE the big idle case holds as many tunnels as RLIMIT_NOFILE allows).
#
# Bounded: every load run is bounded by count and time inside `loadgen` (and by `timeout`
# here); the whole run takes about 3-5 minutes on a 2-core machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
O=29601 K=29602 SQ=29603 TP=29604 KB=29605 K1=29606 # origin, kennel, squid, tinyproxy, kennel-before, kennel 1 MiB pipes
RL=29607 OX=29608 # the minimal splice relay, a second origin on the proxies' CPU (ceilings)
RS=29610 # the spinning relay (ceiling)
FL=29609            # loadgen floor: the least an event-loop proxy does per request (rate rows)

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

wait_port() { # port [pid: must be the one listening, still alive once the port answers]
    for _ in $(seq 1 100); do
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
            echo "the process meant to listen on 127.0.0.1:$1 exited (port taken by another?)" >&2
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            # A port answered by someone else (a leftover run, another target given the same
            # port) would be measured instead: the listening socket must be the process's.
            if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
                echo "127.0.0.1:$1 answers, but the process started for it exited" >&2
                return 1
            fi
            if [ -n "${2:-}" ] && command -v ss >/dev/null &&
                ! ss -Hltnp "sport = :$1" | grep -q "pid=$2,"; then
                echo "127.0.0.1:$1 answers, but not from the process started for it (pid $2)" >&2
                return 1
            fi
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# Each target its own port.
if dup=$(printf '%s\n' $O $K $SQ $TP $KB $K1 $RL $RS $OX $FL | sort | uniq -d) && [ -n "$dup" ]; then
    echo "benches/run.sh gives port $dup to two targets" >&2
    exit 1
fi
# A port that already answers belongs to someone else (a leftover run): its process would be
# measured in place of the one started here.
for p in $O $K $SQ $TP $KB $K1 $RL $RS $OX $FL; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "127.0.0.1:$p is already in use (a leftover benchmark run?); stop it first" >&2
        exit 1
    fi
done

echo "== origin" >&2
taskset -c "$LOAD_CPU" "$LG" origin $O &
PIDS+=($!)
ORIGIN_PID=$!
wait_port $O $ORIGIN_PID
# Ceilings of the download rows (see benches/README.md): the same origin on the proxies' CPU
# (a direct stream whose sender and receiver do not share a CPU and its caches), and the
# simplest user-space relay (`loadgen relay`: a thread per direction blocked in splice) where the
# proxies run.
taskset -c "$PROXY_CPU" "$LG" origin $OX &
PIDS+=($!)
ORIGIN_X_PID=$!
taskset -c "$PROXY_CPU" "$LG" relay $RL &
PIDS+=($!)
RELAY_PID=$!
# The same relay whose download direction never sleeps (it spins only while a tunnel is open).
taskset -c "$PROXY_CPU" "$LG" relay $RS --spin &
PIDS+=($!)
SPIN_PID=$!
taskset -c "$PROXY_CPU" "$LG" floor $FL --origin $O &
PIDS+=($!)
FLOOR_PID=$!
wait_port $OX $ORIGIN_X_PID
wait_port $RL $RELAY_PID
wait_port $RS $SPIN_PID
wait_port $FL $FLOOR_PID

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
    wait_port "$2" "$LAST"
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
pid_filename none
cache_log /dev/null
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

# Every proxy runs at the same time (an idle proxy costs no CPU), and each scenario's runs go
# round-robin over the targets, so slow phases of the shared machine hit all targets alike.
echo "== start the proxies" >&2
TARGETS=("direct::")
start_kennel kennel $K 65536 "$BIN"
TARGETS+=("kennel:$K:$LAST")
start_kennel kennel-1m $K1 1048576 "$BIN"
TARGETS+=("kennel-1m:$K1:$LAST")
if [ -n "${KENNEL_BEFORE:-}" ]; then
    start_kennel kennel-before $KB 65536 "$KENNEL_BEFORE"
    TARGETS+=("kennel-before:$KB:$LAST")
fi
taskset -c "$PROXY_CPU" "$TINY" -d -c "$D/tinyproxy.conf" >"$D/tinyproxy.out" 2>&1 &
PIDS+=($!)
TARGETS+=("tinyproxy:$TP:$!")
taskset -c "$PROXY_CPU" "$SQUID" -N -f "$D/squid.conf" >"$D/squid.out" 2>&1 &
PIDS+=($!)
TARGETS+=("squid:$SQ:$!")
for p in $TP $SQ; do wait_port $p; done
# Ceiling targets, in the download scenarios only (the relay answers nothing but CONNECT).
TARGETS+=("direct-x:::$OX" "relay:$RL:$RELAY_PID" "spin:$RS:$SPIN_PID")
# The floor of the rate rows (it forwards nothing but this benchmark's requests).
TARGETS+=("floor:$FL:$FLOOR_PID")

declare -A VALS CPUS LOADS
once() { # target scenario loadgen-args...
    local target=$1 scenario=$2 out
    shift 2
    if out=$(RUST_BACKTRACE=0 timeout 150 taskset -c "$LOAD_CPU" "$LG" "$@" 2>"$D/lg.err"); then
        VALS[$target|$scenario]+="$(echo "$out" | awk '{print $1}') "
        # with --pids, download runs also print the proxy's CPU seconds per GiB, rate runs
        # how busy the proxy's CPU was (%)
        [[ $out == *cpu* ]] && CPUS[$target|$scenario]+="$(echo "$out" | awk '{print $3}') "
        # with --load-pids, rate runs print the load CPU's time per operation (µs), downloads
        # its time per GiB (s)
        [[ $out == *load-* ]] && LOADS[$target|$scenario]+="$(echo "$out" | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^load-/) print $(i-1)}') "
    else
        echo "  $target $scenario failed: $(grep -m1 Error "$D/lg.err")" >&2
    fi
    return 0
}

record() { # target scenario values...
    local target=$1 scenario=$2 m="-"
    shift 2
    [ $# -gt 0 ] && m=$(printf '%s\n' "$@" | median)
    echo "  $target $scenario: $m (runs: ${*:-none})" >&2
    printf '%s\t%s\t%s\t%s\n' "$target" "$scenario" "$m" "${*:-}" >>"$RESULTS"
}

scenario() { # name proxied-only(0/1) loadgen-args... (PROXY / PIDS substituted per target)
    local name=$1 only_proxies=$2
    shift 2
    echo "== $name" >&2
    for _ in $(seq 1 "${SCENARIO_RUNS:-$RUNS}"); do
        for t in "${TARGETS[@]}"; do
            IFS=: read -r target port pid origin <<<"$t"
            [ -z "$port" ] && [ "$only_proxies" = 1 ] && continue
            local args=("$@") via=() cpu=()
            case $target in
            direct-x | relay | spin) [ "${args[0]}" = download ] || continue ;;
            floor) [[ ${args[0]} == tunnel-rate || ${args[0]} == tunnel-latency || ${args[0]} == forward-rate ]] || continue ;;
            esac
            # the ceiling's own origin replaces the shared one
            [ -n "$origin" ] && args=("${args[@]/#$O/$origin}")
            [ -n "$port" ] && via=(--proxy "$port")
            [ -n "$pid" ] && [[ ${args[0]} == download || ${args[0]} == *-rate ]] && cpu=(--pids "$pid")
            # the load side's CPU (loadgen + the origin on the load CPU); not for `direct, split`,
            # whose origin runs on the proxies' CPU
            [[ ${args[0]} == tunnel-rate || ${args[0]} == forward-rate || ${args[0]} == download ]] &&
                [ "$target" != direct-x ] && cpu+=(--load-pids "$ORIGIN_PID")
            once "$target" "$name" "${args[@]}" "${via[@]}" "${cpu[@]}"
        done
    done
    for t in "${TARGETS[@]}"; do
        IFS=: read -r target port pid <<<"$t"
        # shellcheck disable=SC2086 # word splitting of the value list is intended
        [ -n "${VALS[$target|$name]:-}" ] && record "$target" "$name" ${VALS[$target|$name]}
        # shellcheck disable=SC2086
        [ -n "${CPUS[$target|$name]:-}" ] && record "$target" "${name}_cpu" ${CPUS[$target|$name]}
        # shellcheck disable=SC2086
        [ -n "${LOADS[$target|$name]:-}" ] && record "$target" "${name}_load" ${LOADS[$target|$name]}
    done
    return 0
}

scenario dl1 0 download --origin $O --conns 1 --bytes 1G
scenario dl8 0 download --origin $O --conns 8 --bytes 128M
scenario tunnel_rate 0 tunnel-rate --origin $O --clients 16 --secs 2
scenario tunnel_p99 0 tunnel-latency --origin $O --clients 4 --secs 2
# The same latency at one offered load for every proxy (paced, 1,000 tunnels/s): in the closed
# loop above a proxy that answers faster is also given more concurrent work.
# A p99 of 2 s moves with one hiccup of the shared machine: 2 × RUNS + 1 runs of this one.
SCENARIO_RUNS=$((2 * RUNS + 1)) scenario tunnel_p99_paced 0 tunnel-latency --origin $O --clients 16 --secs 2 --rate 1000
scenario forward_rate 0 forward-rate --origin $O --clients 16 --secs 2
# The same with the header lines a real client sends (User-Agent, Accept, …: 9 in all).
scenario forward_h9_rate 0 forward-rate --origin $O --clients 16 --secs 2 --extra-headers 8
scenario denied_rate 1 denied-rate --clients 16 --secs 2

echo "== idle tunnels" >&2
for t in "${TARGETS[@]}"; do
    IFS=: read -r target port pid <<<"$t"
    [ -z "$port" ] || [ "$target" = relay ] || [ "$target" = spin ] || [ "$target" = floor ] && continue
    once "$target" idle1k idle --origin $O --proxy "$port" --tunnels 1000 --pids "$pid"
    # shellcheck disable=SC2086
    [ -n "${VALS[$target|idle1k]:-}" ] && record "$target" idle1k ${VALS[$target|idle1k]}
    case $target in kennel | kennel-before)
        once "$target" idle10k idle --origin $O --proxy "$port" --tunnels $BIG --pids "$pid"
        # shellcheck disable=SC2086
        [ -n "${VALS[$target|idle10k]:-}" ] && record "$target" idle10k ${VALS[$target|idle10k]}
        ;;
    esac
done

echo "== report" >&2
MACHINE="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
MACHINE+=" $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
VERSIONS="kennel $(git rev-parse --short HEAD), $("$SQUID" -v | head -1 | sed 's/ Cache: Version//'), $("$TINY" -v 2>&1 | head -1)"
python3 "$ROOT/benches/report.py" "$RESULTS" "$ROOT/benches/README.md" \
    "$(date -u +%Y-%m-%d\ %H:%M\ UTC)" "$MACHINE" "$VERSIONS" "$RUNS" "$LOAD" "$BIG"
cp "$RESULTS" "$ROOT/benches/last-run.tsv"
echo "written to benches/README.md (raw values: benches/last-run.tsv)" >&2
