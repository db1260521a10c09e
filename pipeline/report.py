"""Curate's QA report: PNG plots and one static HTML page beside the curated shards.

A person deciding whether to train on a curated dataset needs to see, at a glance, where the
cut-offs fall in the factor distributions, how noisy clips are, whether frames had enough
points, and why clips were lost. Everything is rendered with matplotlib's Agg backend (no
display) and written atomically; no timestamps are embedded, so a resumed run writes the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from pipeline import storage  # noqa: E402
from pipeline.io import write_bytes_atomic  # noqa: E402


def _save(fig: Any, path: Path, dpi: int) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    write_bytes_atomic(buf.getvalue(), path)


def _factor_bins(values: np.ndarray, bins: int) -> tuple[np.ndarray, bool]:
    """Log-spaced bins: factors are multiplicative (a clip 2x too big is as wrong as 2x too
    small), so a log axis shows both tails fairly."""
    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return np.linspace(0, 1, bins + 1), False
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo * 1.0001:
        lo, hi = lo * 0.99, hi * 1.01
    return np.geomspace(lo, hi, bins + 1), True


def plot_factors(aligned: pd.DataFrame, cutoffs: dict[str, Any], path: Path, bins: int,
                 dpi: int) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, col in zip(axes, ("scale_max", "scale_min", "scale_median"), strict=True):
        v = aligned[col].to_numpy(dtype=float) if len(aligned) else np.zeros(0)
        edges, log = _factor_bins(v, bins)
        ax.hist(v, bins=edges, color="tab:blue", alpha=0.8)
        if log:
            ax.set_xscale("log")
            fmt = ticker.FuncFormatter(lambda x, _: f"{x:.3g}")
            ax.xaxis.set_major_formatter(fmt)
            ax.xaxis.set_minor_locator(ticker.LogLocator(base=10.0, subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(fmt)
        c = cutoffs.get(col)
        if c and c.get("low") is not None:
            for x, name in ((c["low"], "low"), (c["high"], "high")):
                ax.axvline(x, color="tab:red", ls="--", label=f"{name} cut-off {x:.4g}")
            ax.legend(fontsize=8)
        ax.set_title(f"{col} per clip (n={v.size})")
        ax.set_xlabel("factor (metres per relative unit)")
    axes[0].set_ylabel("clips")
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_hist(values: np.ndarray, path: Path, title: str, xlabel: str, bins: int, dpi: int,
              vline: float | None = None, vlabel: str = "") -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    ax.hist(v, bins=bins if v.size else 1, color="tab:green", alpha=0.8)
    if vline is not None:
        ax.axvline(vline, color="tab:red", ls="--", label=vlabel)
        ax.legend(fontsize=8)
    ax.set_title(f"{title} (n={v.size})")
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_outcomes(counts: dict[str, Any], path: Path, max_bars: int, dpi: int) -> None:
    """Kept, filtered by rule and failed by reason as one bar chart: all bars sum to the input."""
    bars: list[tuple[str, int, str]] = [("kept", counts["kept"], "tab:green")]
    bars += [(f"filtered: {r}", n, "tab:orange")
             for r, n in counts["filtered"]["by_rule"].items() if n]
    reasons = sorted(counts["failed"]["by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    for r, n in reasons[:max_bars]:
        bars.append((f"failed {r}"[:90], n, "tab:red"))
    rest = sum(n for _, n in reasons[max_bars:])
    if rest:
        bars.append(("failed: other reasons", rest, "tab:red"))
    if counts.get("pending"):
        bars.append(("pending (shard not done)", counts["pending"], "tab:gray"))
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(bars) + 1.2))
    y = np.arange(len(bars))
    ax.barh(y, [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_yticks(y, [b[0] for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("clips")
    ax.set_title(f"outcome of {counts['in']} input clips")
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_truth(rows: list[dict[str, Any]], path: Path, dpi: int) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    t = np.array([r["true_scale"] for r in rows])
    s = np.array([r["clip_scale"] for r in rows])
    ax.scatter(t, s, s=12)
    lim = [min(t.min(), s.min()), max(t.max(), s.max())]
    ax.plot(lim, lim, color="gray", ls=":")
    ax.set_xlabel("true scale")
    ax.set_ylabel("recovered clip_scale")
    ax.set_title("recovered vs true clip factor")
    fig.tight_layout()
    _save(fig, path, dpi)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _plot_all(out_dir: Path, aligned: pd.DataFrame, cutoffs: dict[str, Any],
              counts: dict[str, Any], frame_num_obs: np.ndarray, min_obs_per_frame: int,
              truth: dict[str, Any], rcfg: dict[str, Any]) -> dict[str, Path]:
    """Every figure of the report as a PNG in ``out_dir``; returns them by name."""
    bins, dpi = int(rcfg["bins"]), int(rcfg["dpi"])
    files = {
        "factors": out_dir / "report_factors.png",
        "spread": out_dir / "report_spread.png",
        "obs": out_dir / "report_obs_per_frame.png",
        "outcomes": out_dir / "report_outcomes.png",
    }
    plot_factors(aligned, cutoffs, files["factors"], bins, dpi)
    spread = aligned["scale_spread"].to_numpy(float) if len(aligned) else np.zeros(0)
    plot_hist(spread, files["spread"], "per-clip spread of frame factors",
              "MAD(frame factors) / median", bins, dpi)
    plot_hist(frame_num_obs, files["obs"], "valid depth/point ratios per frame",
              "observations", bins, dpi, vline=min_obs_per_frame,
              vlabel=f"min_obs_per_frame = {min_obs_per_frame}")
    plot_outcomes(counts, files["outcomes"], int(rcfg["max_failure_bars"]), dpi)
    if truth.get("rows"):
        files["truth"] = out_dir / "report_truth.png"
        plot_truth(truth["rows"], files["truth"], dpi)
    return files


def _count_rows(counts: dict[str, Any]) -> list[list[Any]]:
    """The counts table: in, kept, filtered per rule, failed per stage, pending."""
    rows = [["in", counts["in"]], ["kept", counts["kept"]]]
    rows += [[f"filtered: {r}", n] for r, n in counts["filtered"]["by_rule"].items()]
    rows += [[f"failed at {s}", n] for s, n in sorted(counts["failed"]["by_stage"].items())]
    return rows + [["pending", counts["pending"]]]


def _truth_section(truth: dict[str, Any], figure: Path) -> list[str]:
    """Recovered against known scale: the error summary, the figure and one row per clip."""
    return [
        "<h2>Recovered vs known scale</h2>",
        f"<p>median |rel err| {100 * truth['median_abs_rel_err']:.3f}%, "
        f"max {100 * truth['max_abs_rel_err']:.3f}%</p>",
        f"<img src='{figure.name}'>",
        _table([[r["clip_id"], f"{r['true_scale']:.6g}", f"{r['clip_scale']:.6g}",
                 f"{100 * r['rel_err']:.3f}%", r["status"]] for r in truth["rows"]],
               ["clip", "true", "recovered", "rel err", "status"]),
    ]


def make_report(
    out_dir: Path,
    aligned: pd.DataFrame,
    cutoffs: dict[str, Any],
    counts: dict[str, Any],
    frame_num_obs: np.ndarray,
    min_obs_per_frame: int,
    truth: dict[str, Any],
    rcfg: dict[str, Any],
) -> list[Path]:
    """Write the PNGs and ``report.html`` into ``out_dir``; returns the files written."""
    out_dir = storage.path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _plot_all(out_dir, aligned, cutoffs, counts, frame_num_obs, min_obs_per_frame,
                      truth, rcfg)
    cut_rows = [[c, cutoffs[c]["k"], cutoffs[c]["low"], cutoffs[c]["high"]]
                for c in ("scale_max", "scale_min")]
    reason_rows = sorted(counts["failed"]["by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>metric-align curate report"
        "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}"
        "</style></head><body><h1>Curated dataset report</h1>",
        "<h2>Counts</h2>", _table(_count_rows(counts), ["", "clips"]),
        f"<h2>Cut-offs (q = {html.escape(str(cutoffs['q']))}, "
        f"n = {cutoffs['n_clips']} aligned clips)</h2>",
        _table(cut_rows, ["column", "k per tail", "low", "high"]),
        "<h2>Frame-factor distributions</h2>", f"<img src='{files['factors'].name}'>",
        "<h2>Per-clip spread</h2>", f"<img src='{files['spread'].name}'>",
        "<h2>Observations per frame</h2>", f"<img src='{files['obs'].name}'>",
        "<h2>Outcomes and failures by reason</h2>", f"<img src='{files['outcomes'].name}'>",
        _table([[r, n] for r, n in reason_rows], ["stage: reason", "clips"]),
    ]
    if truth.get("rows"):
        parts += _truth_section(truth, files["truth"])
    parts.append("</body></html>")
    page = out_dir / "report.html"
    write_bytes_atomic("\n".join(parts).encode(), page)
    return [*files.values(), page]
