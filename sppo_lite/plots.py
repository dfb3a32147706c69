"""The figures the notebooks show: policies on the simplex, exploitability curves, loss fields.

One colour per method in every figure (PALETTE): a curve's name says its method ("SPPO K = 5, average",
"iterative DPO, last") and style_for turns the name into its colour, and its line style: solid for the
average iterate, dashed for the last iterate. Settings of one method (K = 2, 5, 16) are shades of its colour.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

__all__ = ["PALETTE", "method_of", "style_for", "shades", "simplex_xy", "simplex_axes", "plot_simplex",
           "plot_exploitability", "plot_with_ci", "gradient_field", "plot_gradient_field", "plot_gradient_fields",
           "label_simplex_markers", "save_figure"]

# method → colour, used by every notebook's figures.
PALETTE = {
    "exact": "#000000",      # exact multiplicative weights (the theory)
    "SPPO": "#1f77b4",       # sampled SPPO: the tabular simulation and the language model
    "DPO": "#d62728",        # iterative DPO
    "IPO": "#ff7f0e",        # iterative IPO
    "Nash-MD": "#2ca02c",
    "BT": "#8c564b",         # Bradley–Terry reward argmax
    "SFT": "#7f7f7f",
}
# Keywords in the order they are looked for: "exact SPPO" is exact, "iterative IPO" is IPO, not DPO.
_KEYWORDS = (("exact", "exact"), ("Nash-MD", "Nash-MD"), ("IPO", "IPO"), ("DPO", "DPO"), ("BT", "BT"),
             ("Bradley", "BT"), ("SPPO", "SPPO"), ("SFT", "SFT"))


def method_of(name: str) -> str | None:
    """The method a curve's name belongs to (a PALETTE key), or None."""
    for key, method in _KEYWORDS:
        if key in name:
            return method
    return None


def style_for(name: str) -> dict:
    """matplotlib kwargs for a named curve: its method's colour; dashed if it is a last iterate."""
    method = method_of(name)
    style = {"color": PALETTE[method]} if method else {}
    style["linestyle"] = "--" if "last" in name else "-"
    return style


def shades(method: str, n: int) -> list[str]:
    """n shades of a method's colour, light to dark, for settings of one method (K = 2, 5, 16)."""
    h, l, s = colorsys.rgb_to_hls(*(int(PALETTE[method][i:i + 2], 16) / 255 for i in (1, 3, 5)))
    lights = np.linspace(min(0.75, l + 0.3), max(0.15, l - 0.15), n) if n > 1 else [l]
    return ["#%02x%02x%02x" % tuple(round(255 * c) for c in colorsys.hls_to_rgb(h, li, s)) for li in lights]

_CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def simplex_xy(pi) -> np.ndarray:
    """Barycentric → Cartesian: a 3-response policy (…, 3) as a point (…, 2) in the triangle."""
    return np.asarray(pi, dtype=float) @ _CORNERS


def simplex_axes(ax, labels=("y0", "y1", "y2")):
    """Draw the probability triangle with a label at each pure policy."""
    tri = np.vstack([_CORNERS, _CORNERS[:1]])
    ax.plot(tri[:, 0], tri[:, 1], color="0.3", lw=1)
    offsets = [(-0.04, -0.05), (0.04, -0.05), (0.0, 0.04)]
    for (x, y), (dx, dy), lab in zip(_CORNERS, offsets, labels):
        ax.text(x + dx, y + dy, lab, ha="center", va="center", fontsize=10)
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.1, 0.95)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def plot_simplex(ax, trajectories: dict, nash=None, labels=("y0", "y1", "y2"), start=True):
    """Each trajectory (T, 3) as a path on the simplex; Nash as a star, start as a dot."""
    simplex_axes(ax, labels)
    for name, traj in trajectories.items():
        xy = simplex_xy(traj)
        (line,) = ax.plot(xy[:, 0], xy[:, 1], lw=1.2, label=name, alpha=0.9, **style_for(name))
        if start:
            ax.plot(*xy[0], "o", color=line.get_color(), ms=4)
        ax.plot(*xy[-1], "s", color=line.get_color(), ms=5)
    if nash is not None:
        ax.plot(*simplex_xy(nash), "*", color="k", ms=14, label="Nash (LP)", zorder=5)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return ax


def plot_exploitability(ax, curves: dict, loglog: bool = True, floor: float = 1e-6, bands: dict | None = None,
                        styles: dict | None = None, xlabel: str = "step t", marker=None):
    """Exploitability per step for each named curve; log-log shows power laws as straight lines.

    bands: {name: (low, high)} drawn as a shaded interval (e.g. a 95 % CI over seeds); styles: {name: kwargs}
    overriding style_for (e.g. a shade of the method's colour).
    """
    bands, styles = bands or {}, styles or {}
    for name, values in curves.items():
        v = np.maximum(np.asarray(values, dtype=float), floor)
        steps = np.arange(len(v))
        first = 1 if loglog else 0
        kw = {**style_for(name), **styles.get(name, {})}
        ax.plot(steps[first:], v[first:], label=name, marker=marker, ms=3, **kw)
        if name in bands:
            lo, hi = (np.maximum(np.asarray(b, dtype=float), floor) for b in bands[name])
            ax.fill_between(steps[first:], lo[first:], hi[first:], color=kw.get("color"), alpha=0.2, lw=0)
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("exploitability  max_y P(y ≻ π) − ½")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_with_ci(ax, x, values, low, high, name: str, **kw):
    """Points with 95 % error bars (e.g. a win rate and its bootstrap CI per iteration), in the method's colour."""
    x, values, low, high = (np.asarray(a, dtype=float) for a in (x, values, low, high))
    style = {**style_for(name), **kw}
    return ax.errorbar(x, values, yerr=[values - low, high - values], marker="o", ms=4, capsize=3, label=name,
                       **style)


def gradient_field(loss_fn, lim: float = 3.0, n: int = 15):
    """−∇ of loss_fn(Δ_c, Δ_r) on an n×n grid over [−lim, lim]²: the directions training moves in."""
    import torch  # plots only needs torch for this one figure

    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    dc, dr = torch.meshgrid(g, g, indexing="xy")
    dc, dr = dc.clone().requires_grad_(True), dr.clone().requires_grad_(True)
    loss_fn(dc, dr).sum().backward()
    return dc.detach().numpy(), dr.detach().numpy(), -dc.grad.numpy(), -dr.grad.numpy()


def plot_gradient_field(ax, loss_fn, title: str, lim: float = 3.0, target=None, colorbar: bool = True, norm=None,
                        field=None):
    """Quiver of the descent direction of a pair loss in the (Δ_chosen, Δ_rejected) plane.

    Arrows have equal length (direction only); their colour is the gradient's size, read on the colour bar.
    norm: a matplotlib colour norm shared with other panels (plot_gradient_fields); field: gradient_field's result.
    """
    X, Y, U, V = gradient_field(loss_fn, lim) if field is None else field
    size = np.hypot(U, V) + 1e-12
    shown = size if norm is None else np.maximum(size, norm.vmin)
    q = ax.quiver(X, Y, U / size, V / size, shown, cmap="viridis", norm=norm, scale=25, width=0.005)
    if colorbar:
        ax.figure.colorbar(q, ax=ax, shrink=0.8, label="gradient size |∇L|")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    if target is not None:
        ax.plot(*target, "*", color="crimson", ms=14, label="target")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("Δ_chosen = log π_θ(y_w) − log π_t(y_w)")
    ax.set_ylabel("Δ_rejected")
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    return ax


def save_figure(fig, output_dir, name: str) -> Path:
    """Save fig as OUTPUT_DIR/name.png (150 dpi) and return the path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def plot_gradient_fields(axes, loss_fns: dict, titles: dict, lim: float = 3.0, targets: dict | None = None):
    """Several pair losses' plot_gradient_field side by side on one logarithmic colour scale, with one colour bar,
    so a colour means the same gradient size in every panel. Returns the bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    targets = targets or {}
    fields = {name: gradient_field(fn, lim) for name, fn in loss_fns.items()}
    sizes = np.concatenate([np.hypot(U, V).ravel() for _, _, U, V in fields.values()])
    norm = LogNorm(vmin=sizes[sizes > 1e-9].min(), vmax=sizes.max())
    for ax, (name, fn) in zip(axes, loss_fns.items()):
        plot_gradient_field(ax, fn, titles.get(name, name), lim, targets.get(name), colorbar=False, norm=norm,
                            field=fields[name])
    return axes[0].figure.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes), shrink=0.8,
                                   label="gradient size |∇L| (one scale, all panels)")


def label_simplex_markers(ax, start: bool = True, loc: str = "upper right"):
    """Add the markers plot_simplex draws without a name to the legend: ● start π_0, ■ where a run ends."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if start:
        handles.append(Line2D([], [], ls="", marker="o", ms=4, color="0.35"))
        labels.append("start π_0 (each path)")
    handles.append(Line2D([], [], ls="", marker="s", ms=5, color="0.35"))
    labels.append("end of the run (each path)")
    return ax.legend(handles, labels, loc=loc, fontsize=8, frameon=False)
