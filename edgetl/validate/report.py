"""Human-readable ``report.md`` of a validation run."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f} %" if pct else f"{value:.4g}"
    return str(value)


def render_markdown(bundle: Any, doc: dict[str, Any]) -> str:
    ref, cand = doc["reference"], doc["candidate"]
    verdict = "PASSED" if doc["passed"] else "FAILED"
    lines = [
        f"# Validation of `{bundle.name}`: {verdict}",
        "",
        f"Reference `{ref['artifact']}` ({ref['precision']}) vs candidate `{cand['artifact']}` ({cand['precision']}),",
        f"on {doc['images']['count']} images from `{doc['images']['source']}`"
        + (f" ({doc['images']['undecodable']} undecodable, skipped)" if doc["images"]["undecodable"] else "") + ".",
        "",
        "## Gate",
        "",
        "| check | value | limit | result |",
        "|---|---|---|---|",
    ]
    for c in doc["checks"]:
        lines.append(f"| {c['name']} | {_fmt(c['value'])} | {c['op']} {_fmt(c['limit'])} | "
                     f"{'pass' if c['passed'] else '**FAIL**'} |")
    metrics = doc["metrics"]
    if metrics.get("reference"):
        lines += ["", "## Task metrics", "", "| metric | reference | candidate | delta |", "|---|---|---|---|"]
        for key, ref_value in metrics["reference"].items():
            if isinstance(ref_value, (int, float)):
                lines.append(f"| {key} | {_fmt(ref_value)} | {_fmt(metrics['candidate'].get(key))} | "
                             f"{_fmt(metrics['delta'].get(key))} |")
    lines += ["", "## Output agreement", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in doc["agreement"].items() if not isinstance(v, (dict, list))]
    lines += ["", "## Size and latency (batch 1, this machine)", "",
              "| model | bytes | p50 ms | p99 ms |", "|---|---|---|---|"]
    for label, m in (("reference", ref), ("candidate", cand)):
        lat = m.get("latency_batch1", {})
        lines.append(f"| {label} | {m['bytes']} | {_fmt(lat.get('p50_ms'))} | {_fmt(lat.get('p99_ms'))} |")
    if "speedup_p50" in cand:
        lines.append(f"\nCandidate speed-up at p50: {cand['speedup_p50']:.2f}x; size ratio {cand['size_ratio']:.2f}.")
    lines.append("")
    return "\n".join(lines)
