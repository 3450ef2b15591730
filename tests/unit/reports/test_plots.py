"""Plots: a method keeps one colour across panels, and the figure is written where asked."""

from __future__ import annotations

from ngc.reports.plots import method_colours, metric_vs_budget


def test_a_method_keeps_its_colour_in_every_panel_even_where_another_is_missing():
    panels = {
        "R = 0.2": {"svd-llm": [(0, 60.0)], "ngc": [(0, 31.0)]},
        "R = 0.4": {"ngc": [(0, 64.0)], "zs-svd": [(0, 92.0)]},
    }
    colours = method_colours(panels)
    assert colours == {"svd-llm": "C0", "ngc": "C1", "zs-svd": "C2"}


def test_metric_vs_budget_draws_each_panel_with_the_shared_colours(tmp_path, monkeypatch):
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    panels = {
        "R = 0.2": {"a": [(0, 3.0), (100, 2.0)], "b": [(0, 4.0), (100, 3.0)]},
        "R = 0.4": {"b": [(0, 5.0), (100, 4.0)]},
    }
    figures = []
    original = plt.subplots

    def keep(*args, **kwargs):
        fig, axes = original(*args, **kwargs)
        figures.append(axes)
        return fig, axes

    monkeypatch.setattr(plt, "subplots", keep)
    path = metric_vs_budget(panels, "tokens", "ppl", "t", tmp_path / "curve.png", reference=1.0)
    assert path.is_file() and path.stat().st_size > 0
    left, right = figures[0][0]
    colour = {line.get_label(): mcolors.to_hex(line.get_color()) for line in left.get_lines()}
    (b_right,) = [line for line in right.get_lines() if line.get_label() == "b"]
    assert mcolors.to_hex(b_right.get_color()) == colour["b"] != colour["a"]
