"""Reading and printing a harness report's figures, shared by the A/B and
real-time scripts."""


def take(report, path, unit):
    """The figure at `path` in a `tether-bench --json` report (0 when
    absent); latencies (`unit` "ms") come in microseconds."""
    v = report
    for k in path:
        v = (v or {}).get(k)
    v = v or 0.0
    return v / 1000 if unit == "ms" else v


def fmt(v, unit):
    if unit == "ms":
        return f"{v:.2f}"
    if unit == "%":
        return f"{v:.1f}"
    return f"{v:,.0f}"
