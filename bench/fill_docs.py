"""Paste the benchmark tables (bench/results/*.md, greedy_cache json) into docs/strategies.md."""
import json
from pathlib import Path

root = Path(__file__).resolve().parents[1]
parts = []
for name in ("smollm2-135m", "gemma3-270m"):
    md = root / "bench" / "results" / f"{name}.md"
    parts.append(md.read_text() if md.exists() else f"### {name}\n\nNot finished within the session's CPU time.\n")
cost = root / "bench" / "results" / "metric_cost.md"
if cost.exists():
    parts.append("### Cost of each metric (bench/metric_cost.py, machine otherwise idle)\n\n" + cost.read_text())
for g in sorted((root / "bench" / "results").glob("greedy_cache_*.json")):
    r = json.loads(g.read_text())
    parts.append(f"### greedy-ppl: cached vs naive loop ({r['model']}, {g.name})\n\n"
                 f"{r['steps']} greedy steps on {r['calibration_tokens']} calibration tokens, {r['threads']} thread: "
                 f"cached {r['cached_s']} s, naive (full forward per candidate) {r['naive_s']} s, "
                 f"**{r['speedup']}x faster**; same layers picked: {r['same_layers']} "
                 f"(cached {r['cached_order']}, naive {r['naive_order']}).\n")
doc = root / "docs" / "strategies.md"
text = doc.read_text()
marker_start, marker_end = "<!-- bench:start -->", "<!-- bench:end -->"
body = marker_start + "\n\n" + "\n".join(parts) + "\n" + marker_end
if "BENCH_RESULTS" in text:
    text = text.replace("BENCH_RESULTS", body)
else:
    a, b = text.index(marker_start), text.index(marker_end) + len(marker_end)
    text = text[:a] + body + text[b:]
doc.write_text(text)
