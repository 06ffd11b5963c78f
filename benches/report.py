#!/usr/bin/env python3
"""Render benches/run.sh results (TSV: target, scenario, median, runs) into README.md between
the run.sh markers: values and ratios measured in the same run."""
import sys

results, readme, date, machine, versions, runs, load, big = sys.argv[1:9]
val, raw = {}, {}
for line in open(results):
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 3:
        continue
    t, s, m = parts[0], parts[1], parts[2]
    raw[(t, s)] = parts[3] if len(parts) > 3 else ""
    try:
        val[(t, s)] = float(m)
    except ValueError:
        pass

# Proxy CPU time per operation of the rate rows, run by run (busy % and rate come from the same
# run): far steadier than the rates on a shared machine, so before/after is read from these.
for (t, s_), r in list(raw.items()):
    if not s_.endswith("_rate"):
        continue
    rates, busy = r.split(), raw.get((t, s_ + "_cpu"), "").split()
    per_op = sorted(float(b) * 1e4 / float(x) for x, b in zip(rates, busy) if float(x) > 0)
    if len(per_op) == len(rates) and per_op:
        val[(t, s_ + "_cpuop")] = per_op[(len(per_op) - 1) // 2]
        raw[(t, s_ + "_cpuop")] = " ".join(f"{v:.1f}" for v in per_op)

ROWS = [
    ("dl1", "one CONNECT tunnel, 1 GiB download (MB/s)", True),
    ("dl1_cpu", "… proxy CPU per GiB relayed (s)", False),
    ("dl8", "8 tunnels, 128 MiB each (MB/s, total)", True),
    ("dl8_cpu", "… proxy CPU per GiB relayed (s)", False),
    ("tunnel_rate", "new tunnel + small GET + close, 16 clients (/s)", True),
    ("tunnel_rate_cpu", "… proxy CPU busy (%)", False),
    ("tunnel_rate_cpuop", "… proxy CPU per operation (µs)", False),
    ("tunnel_p99", "tunnel setup latency, p99, 4 clients in a loop (µs; direct: TCP connect)", False),
    ("tunnel_p99_paced", "tunnel setup latency, p99, 1,000 new tunnels/s from 16 clients (µs; direct: TCP connect)", False),
    ("forward_rate", "absolute-form GET on keep-alive, 16 connections (/s; direct: origin-form)", True),
    ("forward_rate_cpu", "… proxy CPU busy (%)", False),
    ("forward_rate_cpuop", "… proxy CPU per operation (µs)", False),
    ("forward_h9_rate", "… the same GET with 9 header lines, as pip sends (/s)", True),
    ("forward_h9_rate_cpuop", "… proxy CPU per operation (µs)", False),
    ("denied_rate", "CONNECT to a denied host, 16 clients (/s)", True),
    ("denied_rate_cpu", "… proxy CPU busy (%)", False),
    ("denied_rate_cpuop", "… proxy CPU per operation (µs)", False),
    ("idle1k", "RSS per idle tunnel, 1,000 held (KiB)", False),
    ("idle10k", f"RSS per idle tunnel, {int(big):,} held (KiB)", False),
]


def fmt(x):
    if x is None:
        return "–"
    if x < 10:
        return f"{x:.2f}"
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def g(t, s):
    return val.get((t, s))


out = []
out.append(f"Run {date}: {machine}; {versions}; median of {runs} runs per cell "
           f"(paced p99: {2 * int(runs) + 1}; RSS: one run); {load}. The machine is shared with other engineers' builds, so "
           "absolute numbers are noisy: compare the ratios, which come from the same run.")
out.append("")
out.append("| scenario | direct | Squid | Tinyproxy | kennel | kennel ÷ direct | kennel ÷ Squid | kennel ÷ Tinyproxy |")
out.append("|---|---|---|---|---|---|---|---|")
for key, label, _ in ROWS:
    k = g("kennel", key)
    out.append("| " + " | ".join([
        label, fmt(g("direct", key)), fmt(g("squid", key)), fmt(g("tinyproxy", key)), fmt(k),
        ratio(k, g("direct", key)), ratio(k, g("squid", key)), ratio(k, g("tinyproxy", key)),
    ]) + " |")
out.append("")
out.append("kennel before/after (`before` = the build given as KENNEL_BEFORE, named in the "
           "reading below), and with 1 MiB pipes (`limits.buffer_bytes = 1048576`), same run:")
out.append("")
out.append("| scenario | kennel before | kennel now (splice, 256 KiB pipes) | kennel now, 1 MiB pipes | now ÷ before | 1 MiB ÷ before |")
out.append("|---|---|---|---|---|---|")
for key, label, _ in ROWS:
    b, a, m = g("kennel-before", key), g("kennel", key), g("kennel-1m", key)
    out.append("| " + " | ".join([label, fmt(b), fmt(a), fmt(m), ratio(a, b), ratio(m, b)]) + " |")
out.append("")
out.append("Reference points for the download rows, same run: `direct, split` = the origin on the "
           "proxies' CPU and the client on the load CPU (the stream's two ends on different CPUs); "
           "`minimal relay` = `loadgen relay` on the proxies' CPU (a thread per direction blocked "
           "in splice(2) through a 1 MiB pipe: no event loop, policy or accounting); `spinning "
           "relay` = `loadgen relay --spin`, the same relay whose download direction never sleeps "
           "(non-blocking splice tried again at once, burning the proxies' CPU while the tunnel is "
           "open): no wake-up of the relay's CPU is waited for, so what it cannot move no relay "
           "on that CPU moves. `load CPU per "
           "GiB` = the load generator's and the origin's CPU time per GiB, both on the load CPU: "
           "where a proxied stream costs the load CPU more per byte than the direct one, "
           "direct × (direct's ÷ the proxied stream's) is the most it can move once that CPU is "
           "busy.")
out.append("")
out.append("| scenario | direct | direct, split | minimal relay | spinning relay | kennel | kennel, 1 MiB pipes | minimal relay ÷ direct | spinning relay ÷ direct | kennel ÷ spinning relay | kennel 1 MiB ÷ spinning relay |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|")
DL_ROWS = [
    ("dl1", ROWS[0][1]),
    ("dl1_cpu", ROWS[1][1]),
    ("dl1_load", "… load CPU per GiB (s)"),
    ("dl8", ROWS[2][1]),
    ("dl8_cpu", ROWS[3][1]),
    ("dl8_load", "… load CPU per GiB (s)"),
]
for key, label in DL_ROWS:
    d, x, r, sp, k, m = (g(t, key) for t in ("direct", "direct-x", "relay", "spin", "kennel",
                                              "kennel-1m"))
    out.append("| " + " | ".join([label, fmt(d), fmt(x), fmt(r), fmt(sp), fmt(k), fmt(m),
                                  ratio(r, d), ratio(sp, d), ratio(k, sp), ratio(m, sp)]) + " |")
out.append("")
out.append("Reach of the rate targets, same run: `floor` = `loadgen floor` on the proxies' CPU, the "
           "least an event-loop proxy does per request (the same socket calls as a proxy; no "
           "parsing beyond the head's end and Content-Length, no policy, no header rewriting, no "
           "pool, no accounting; one origin connection per client connection). `load CPU per "
           "operation` = the load generator's and the origin's CPU time per completed operation, "
           "both on the load CPU: with that CPU saturated, 10^6 / it is the most operations per "
           "second this load side drives through that proxy.")
out.append("")
out.append("| scenario | direct | floor | kennel | Squid | floor ÷ direct | floor ÷ Squid | kennel ÷ floor | kennel ÷ direct | kennel ÷ Squid |")
out.append("|---|---|---|---|---|---|---|---|---|---|")
REACH = [
    ("tunnel_rate", "new tunnel + small GET + close, 16 clients (/s)"),
    ("tunnel_rate_cpu", "… proxy CPU busy (%)"),
    ("tunnel_rate_cpuop", "… proxy CPU per operation (µs)"),
    ("tunnel_rate_load", "… load CPU per operation (µs)"),
    ("tunnel_p99", "tunnel setup latency, p99, 4 clients in a loop (µs; direct: TCP connect)"),
    ("tunnel_p99_paced", "tunnel setup latency, p99, 1,000 new tunnels/s from 16 clients (µs; direct: TCP connect)"),
    ("forward_rate", "absolute-form GET on keep-alive, 16 connections (/s; direct: origin-form)"),
    ("forward_rate_cpu", "… proxy CPU busy (%)"),
    ("forward_rate_cpuop", "… proxy CPU per operation (µs)"),
    ("forward_rate_load", "… load CPU per operation (µs)"),
    ("forward_h9_rate", "… the same GET with 9 header lines, as pip sends (/s)"),
    ("forward_h9_rate_cpuop", "… proxy CPU per operation (µs)"),
    ("forward_h9_rate_load", "… load CPU per operation (µs)"),
]
for key, label in REACH:
    d, f, k, q = (g(t, key) for t in ("direct", "floor", "kennel", "squid"))
    out.append("| " + " | ".join([label, fmt(d), fmt(f), fmt(k), fmt(q), ratio(f, d), ratio(f, q),
                                  ratio(k, f), ratio(k, d), ratio(k, q)]) + " |")
out.append("")
out.append("<details><summary>every run</summary>")
out.append("")
out.append("| target | scenario | runs |")
out.append("|---|---|---|")
for (t, s), r in raw.items():
    out.append(f"| {t} | {s} | {r} |")
out.append("")
out.append("</details>")

BEGIN, END = "<!-- run.sh:begin -->", "<!-- run.sh:end -->"
text = open(readme).read()
block = BEGIN + "\n" + "\n".join(out) + "\n" + END
if BEGIN in text and END in text:
    a, b = text.index(BEGIN), text.index(END) + len(END)
    text = text[:a] + block + text[b:]
else:
    text = text.rstrip("\n") + "\n\n## Proxy comparison (benches/run.sh)\n\n" + block + "\n"
open(readme, "w").write(text)
