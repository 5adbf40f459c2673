#!/usr/bin/env python3
"""The report of tools/compare.sh: results.csv and results.md in the run's directory,
from its JSON reports. Usage: compare_report.py DIR MACHINE COMMAND."""
import glob, json, os, sys
out, machine, command = sys.argv[1], sys.argv[2], sys.argv[3]
rows = []
order = ["ocean-liner", "ocean-liner-2ms", "ocean-liner-3node", "redis-always", "redis-none",
         "udp-ceiling"]
for path in sorted(glob.glob(f"{out}/*.json"),
                   key=lambda p: (order.index(os.path.basename(p).split(".")[0])
                                  if os.path.basename(p).split(".")[0] in order else 9, p)):
    system, label = os.path.basename(path)[:-5].split(".")
    r = json.load(open(path))
    rows.append((system, label, r))
names = {
    "ocean-liner": "Ocean Liner (durable)",
    "ocean-liner-2ms": "Ocean Liner (durable), 2 ms windows",
    "ocean-liner-3node": "Ocean Liner 3-node cluster (durable)",
    "redis-always": "Redis appendfsync always",
    "redis-none": "Redis no persistence",
    "udp-ceiling": "UDP ceiling (answers at once, no work)",
}
def conf(label, r):
    if r["protocol"] == "udp" and r["pipeline"] > 1:
        return f"UDP, {r['concurrency']} outstanding, batches of {r['pipeline']}"
    if r["protocol"] == "udp":
        return f"UDP, {r['concurrency']} outstanding"
    return f"RESP, {r['concurrency'] // r['pipeline']} conns × pipeline {r['pipeline']}"
best, best_always = {}, {}
for system, label, r in rows:
    op = r["workload"]
    if system.startswith("redis"):
        best[op] = max(best.get(op, 0), r["ops_per_sec"])
    if system == "redis-always":
        best_always[op] = max(best_always.get(op, 0), r["ops_per_sec"])
with open(f"{out}/results.csv", "w") as f:
    f.write("system,run,op,protocol,pipeline,concurrency,ops_per_sec,p50_us,p99_us,p999_us,errors\n")
    for system, label, r in rows:
        f.write(f"{system},{label},{r['workload']},{r['protocol']},{r['pipeline']},"
                f"{r['concurrency']},{r['ops_per_sec']},{r['p50_us']},{r['p99_us']},"
                f"{r['p999_us']},{r['errors']}\n")
lines = [f"Machine: {machine}", "", f"Command: `{command}`", "",
         "Every system driven by `ocean-liner bench` (the same client, concurrency model and "
         "histograms). Ratios: ops/s over the best Redis figure for the same op (any mode), "
         "and over the best Redis `appendfsync always` figure (the durable one).", "",
         "| system | op | config | ops/s | p50 ms | p99 ms | p99.9 ms | errors | / best Redis | / best Redis always |",
         "|---|---|---|---|---|---|---|---|---|---|"]
for op in ("set", "get"):
    for system, label, r in rows:
        if r["workload"] != op or system == "udp-ceiling":
            continue
        ratio = r["ops_per_sec"] / best[op] if best.get(op) else float("nan")
        durable = r["ops_per_sec"] / best_always[op] if best_always.get(op) else float("nan")
        lines.append(f"| {names.get(system, system)} | {op.upper()} | {conf(label, r)} | "
                     f"{r['ops_per_sec']:,.0f} | {r['p50_us']/1000:.2f} | {r['p99_us']/1000:.2f} | "
                     f"{r['p999_us']/1000:.2f} | {r['errors']} | {ratio:.2f} | {durable:.2f} |")
ceiling = {r["concurrency"]: r["ops_per_sec"] for system, label, r in rows
           if system == "udp-ceiling"}
if ceiling:
    lines += ["", "UDP GETs as a fraction of the machine's UDP request/response ceiling at the "
              "same outstanding count (`ocean-liner udp-ceiling` driven by the same client):", "",
              "(a BATCH carries many requests per datagram, so it can pass the ceiling of "
              "one request per datagram)", "",
              "| system | config | ops/s | ceiling ops/s | fraction | p99 ms |",
              "|---|---|---|---|---|---|"]
    for system, label, r in rows:
        if r["protocol"] == "udp" and r["workload"] == "get" and system != "udp-ceiling" \
                and r["concurrency"] in ceiling:
            c = ceiling[r["concurrency"]]
            lines.append(f"| {names.get(system, system)} | {conf(label, r)} | "
                         f"{r['ops_per_sec']:,.0f} | {c:,.0f} | {r['ops_per_sec'] / c:.2f} | "
                         f"{r['p99_us']/1000:.2f} |")
# The goals, each system at its peak.
def peak(pred):
    found = [r for s_, label, r in rows if pred(s_, r)]
    return max(found, key=lambda r: r["ops_per_sec"]) if found else None
ol = lambda s_: s_ in ("ocean-liner", "ocean-liner-2ms")
goals = []
for op, peer, want, what in (("set", "redis-always", 1.5, "durable SET vs Redis appendfsync always"),
                             ("get", "redis-none", 1.5, "GET vs Redis without persistence")):
    a = peak(lambda s_, r: ol(s_) and r["workload"] == op)
    b = peak(lambda s_, r: s_ == peer and r["workload"] == op)
    if a and b:
        ratio = a["ops_per_sec"] / b["ops_per_sec"]
        goals.append(f"| {what} | {a['ops_per_sec']:,.0f} "
                     f"({conf('', a)}) | {b['ops_per_sec']:,.0f} ({conf('', b)}) | "
                     f"{ratio:.2f}× | ≥ {want}× | {'met' if ratio >= want else 'missed'} |")
single = peak(lambda s_, r: s_ == "ocean-liner" and r["workload"] == "set" and r["protocol"] == "udp")
three = peak(lambda s_, r: s_ == "ocean-liner-3node" and r["workload"] == "set")
if single and three:
    ratio = three["ops_per_sec"] / single["ops_per_sec"]
    goals.append(f"| 3-node durable SET vs single node (UDP, 50 ms windows) | "
                 f"{three['ops_per_sec']:,.0f} ({conf('', three)}) | "
                 f"{single['ops_per_sec']:,.0f} ({conf('', single)}) | {ratio:.2f}× | ≥ 0.5× | "
                 f"{'met' if ratio >= 0.5 else 'missed'} |")
if goals:
    lines += ["", "Goals, each system at its peak in this run:", "",
              "| goal | Ocean Liner | peer | ratio | target | |", "|---|---|---|---|---|---|"] + goals
# The durable UDP SET's p99 near 80% of its peak, against twice the batch window.
for system, window_ms in (("ocean-liner", 50), ("ocean-liner-2ms", 2)):
    sweep = [r for s_, label, r in rows
             if s_ == system and r["workload"] == "set" and r["protocol"] == "udp"]
    if len(sweep) > 1:
        peak = max(r["ops_per_sec"] for r in sweep)
        near = min(sweep, key=lambda r: abs(r["ops_per_sec"] - 0.8 * peak))
        lines += ["", f"{names[system]}: UDP SET p99 near 80% of its peak ({peak:,.0f}/s): "
                  f"{near['p99_us']/1000:.1f} ms at {near['concurrency']} outstanding "
                  f"({near['ops_per_sec']:,.0f}/s, {near['ops_per_sec']/peak:.2f} of the peak); "
                  f"twice the batch window is {2 * window_ms} ms."]
charts = [("throughput.svg", "Operations per second, every run")]
for op in ("set", "get"):
    charts.append((f"concurrency-{op}.svg", f"{op.upper()} operations per second by requests outstanding"))
for op in ("set", "get"):
    charts.append((f"latency-{op}.svg", f"{op.upper()} latency distribution"))
    charts.append((f"timeline-{op}.svg", f"{op.upper()} operations per second over the run"))
lines.append("")
for name, title in charts:
    if os.path.exists(f"{out}/{name}"):
        lines += [f"![{title}]({name})", ""]
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
