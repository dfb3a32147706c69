"""One colour per method: the palette, line styles and the plotting helpers the notebooks call."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sppo_lite import game, plots  # noqa: E402


@pytest.mark.parametrize("name, method", [
    ("SPPO K = 5, average", "SPPO"), ("SPPO LM, last", "SPPO"), ("exact SPPO, last", "exact"),
    ("exact MW, average", "exact"), ("iterative DPO, last", "DPO"), ("iterative IPO, average", "IPO"),
    ("Nash-MD (τ = 0.05), last", "Nash-MD"), ("BT-reward argmax", "BT"), ("Bradley–Terry argmax", "BT"),
    ("Nash (LP)", None),
])
def test_names_map_to_one_method(name, method):
    assert plots.method_of(name) == method


def test_one_colour_per_method_and_dashes_for_last_iterates():
    assert plots.style_for("SPPO LM, last")["color"] == plots.style_for("SPPO K = 5, average")["color"]
    assert plots.style_for("SPPO LM, last")["linestyle"] == "--"
    assert plots.style_for("SPPO K = 5, average")["linestyle"] == "-"
    assert len(set(plots.PALETTE.values())) == len(plots.PALETTE)


def test_shades_keep_the_hue_and_go_light_to_dark():
    base_h = mcolors.rgb_to_hsv(mcolors.to_rgb(plots.PALETTE["SPPO"]))[0]
    out = plots.shades("SPPO", 3)
    hsv = [mcolors.rgb_to_hsv(mcolors.to_rgb(c)) for c in out]
    assert all(abs(h[0] - base_h) < 0.01 for h in hsv)
    lightness = [sum(mcolors.to_rgb(c)) for c in out]
    assert lightness[0] > lightness[1] > lightness[2]


def test_plots_draw_in_the_palette():
    P = game.weighted_cycle()
    traj = game.sppo_dynamics(P, 1.0, 20, pi0=[0.6, 0.3, 0.1])
    fig, axes = plt.subplots(1, 3)
    plots.plot_simplex(axes[0], {"exact SPPO, last": traj, "SPPO K = 5, average": game.running_average(traj)})
    colours = [mcolors.to_hex(line.get_color()) for line in axes[0].lines[1:]]  # [0] is the triangle
    assert plots.PALETTE["exact"] in colours and plots.PALETTE["SPPO"] in colours
    curve = game.exploitability_curve(P, traj)
    plots.plot_exploitability(axes[1], {"iterative DPO, last": curve}, bands={"iterative DPO, last": (curve / 2, curve * 2)})
    assert mcolors.to_hex(axes[1].lines[0].get_color()) == plots.PALETTE["DPO"]
    assert axes[1].lines[0].get_linestyle() == "--" and len(axes[1].collections) == 1
    bars = plots.plot_with_ci(axes[2], [0, 1], [50, 60], [45, 52], [55, 66], "DPO LM")
    np.testing.assert_allclose(bars.lines[0].get_ydata(), [50, 60])
    plt.close(fig)


def test_gradient_field_has_a_colour_bar():
    import torch

    fig, ax = plt.subplots()
    plots.plot_gradient_field(ax, lambda dc, dr: (dc - 1) ** 2 + (dr + 1) ** 2, "quadratic")
    assert len(fig.axes) == 2  # the panel and its colour bar
    X, Y, U, V = plots.gradient_field(lambda dc, dr: (dc - 1) ** 2 + (dr + 1) ** 2, lim=1.0, n=3)
    np.testing.assert_allclose(U, -2 * (X - 1))  # −∂/∂Δ_c
    plt.close(fig)
    del torch
