"""Parses an OpenMetrics exposition (stdin) with prometheus_client's parser and checks
what bindwatch promises about it beyond what the parser enforces itself.

Exit 0 and one summary line when all holds; a message and exit 1 otherwise.
"""
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = sys.stdin.read()
families = list(text_string_to_metric_families(text))  # raises on anything invalid
problems = []
by_name = {f.name: f for f in families}
for f in families:
    if f.type == "unknown":
        problems.append(f"{f.name}: no TYPE (or samples outside their family)")
    if f.type == "counter" and f.name.endswith("_total"):
        problems.append(f"{f.name}: a counter family named with _total")
    for unit in ("seconds", "bytes", "ratio"):
        if f.name.endswith("_" + unit) and f.unit != unit and f.type not in ("info", "stateset"):
            problems.append(f"{f.name}: no '# UNIT {unit}'")
for name in sys.argv[1:]:
    if name not in by_name:
        problems.append(f"{name}: missing")
hist = [f for f in families if f.type == "histogram"]
if not hist:
    problems.append("no histogram family")
for f in hist:
    if not any(s.name == f.name + "_bucket" and s.labels.get("le") == "+Inf" for s in f.samples):
        problems.append(f"{f.name}: no +Inf bucket")
if problems:
    print("\n".join(problems))
    sys.exit(1)
counters = sum(1 for f in families if f.type == "counter")
units = sum(1 for f in families if f.unit)
print(f"ok: {len(families)} families, {counters} counters, {units} with a unit, {len(hist)} histograms")
