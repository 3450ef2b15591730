"""Plots (the only module that imports matplotlib; it is imported lazily, with the Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    from ngc.atomic import replace_with

    path = Path(path)
    with replace_with(path) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    _pyplot().close(fig)
    return path


def dense_vs_compressed(
    title: str, perplexity: Mapping[str, float], kept: Mapping[str, float], path: str | Path
) -> Path:
    """Two panels: perplexity of each model; kept fraction of parameters and MACs per token."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(perplexity)
    bars = left.bar(names, [perplexity[n] for n in names], color=["#4c72b0", "#dd8452", "#55a868"][: len(names)])
    left.bar_label(bars, fmt="%.2f")
    left.set_ylabel("perplexity (lower is better)")
    left.set_title("WikiText-2 test")
    labels = list(kept)
    bars = right.bar(labels, [kept[n] for n in labels], color="#8172b3")
    right.bar_label(bars, fmt="%.3f")
    right.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    right.set_ylim(0, 1.15)
    right.set_ylabel("compressed / dense")
    right.set_title("what is kept")
    fig.suptitle(title)
    return _save(fig, path)


def metric_vs_ratio(
    series: Mapping[str, Sequence[tuple[float, float]]],
    ylabel: str,
    title: str,
    path: str | Path,
    reference: float | None = None,
    log_y: bool = False,
) -> Path:
    """One line per method: ``series[method] = [(ratio, value), ...]``; a dashed line at ``reference``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, points in series.items():
        points = sorted(points)
        ax.plot([r for r, _ in points], [v for _, v in points], marker="o", label=method)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=0.9, label="dense")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("ratio removed R")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def per_layer(
    panels: Mapping[str, Mapping[str, Sequence[tuple[int, float, float | None]]]], title: str, path: str | Path
) -> Path:
    """One panel per quantity; in each, one line per model of ``(layer, value, standard error or None)``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (quantity, series) in zip(axes[0], panels.items(), strict=True):
        for label, points in series.items():
            layers = [p[0] for p in points]
            values = [p[1] for p in points]
            errors = [p[2] if p[2] is not None else 0.0 for p in points]
            ax.errorbar(layers, values, yerr=errors, marker="o", markersize=3, capsize=2, label=label)
        ax.set_xlabel("layer")
        ax.set_title(quantity)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def by_correctness(models: Mapping[str, Sequence[Mapping[str, object]]], title: str, path: str | Path) -> Path:
    """Per-item stability and driving ratio of each model, split by whether the item was answered correctly.

    ``models[name]`` is a list of items with keys ``correct``, ``stability`` and ``driving_ratio``; one panel per
    feature, a pair of boxes (wrong, correct) per model with the items drawn on top.
    """
    import math
    import random

    plt = _pyplot()
    features = (("stability", "stability S = -λ (mean over layers)"), ("driving_ratio", "driving ratio (mean)"))
    fig, axes = plt.subplots(1, len(features), figsize=(5.2 * len(features), 4.0), squeeze=False)
    jitter = random.Random(0)
    for ax, (key, label) in zip(axes[0], features, strict=True):
        positions, data, ticks = [], [], []
        for m, (name, items) in enumerate(models.items()):
            for c, correct in enumerate((False, True)):
                values = [
                    float(i[key]) for i in items if bool(i["correct"]) == correct and math.isfinite(float(i[key]))
                ]
                x = 3 * m + c
                positions.append(x)
                data.append(values)
                ticks.append(f"{name}\n{'correct' if correct else 'wrong'} (n={len(values)})")
                ax.scatter(
                    [x + jitter.uniform(-0.15, 0.15) for _ in values],
                    values,
                    s=6,
                    alpha=0.4,
                    color="#55a868" if correct else "#c44e52",
                )
        ax.boxplot(data, positions=positions, widths=0.6, showfliers=False)
        ax.set_xticks(positions, ticks, fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    return _save(fig, path)


def method_colours(panels: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """One colour of matplotlib's default cycle per method, in order of first appearance across ``panels``."""
    methods = list(dict.fromkeys(m for series in panels.values() for m in series))
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def metric_vs_budget(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    xlabel: str,
    ylabel: str,
    title: str,
    path: str | Path,
    reference: float | None = None,
) -> Path:
    """One panel per key (e.g. a ratio), one line per method: ``panels[panel][method] = [(budget, value), ...]``;
    the x axis is linear up to the smallest positive budget and logarithmic above (budget 0 stays visible). A
    method has the same colour in every panel."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    colours = method_colours(panels)
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        positive = [x for points in series.values() for x, _ in points if x > 0]
        for method, points in series.items():
            points = sorted(points)
            xs, ys = [x for x, _ in points], [v for _, v in points]
            ax.plot(xs, ys, marker="o", label=method, color=colours[method])
        if positive:
            ax.set_xscale("symlog", linthresh=min(positive))
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=0.9, label="dense")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)
