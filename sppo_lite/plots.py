"""The figures the notebooks show: policies on the simplex, exploitability curves, loss fields."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["simplex_xy", "simplex_axes", "plot_simplex", "plot_exploitability",
           "gradient_field", "plot_gradient_field", "save_figure"]

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
        (line,) = ax.plot(xy[:, 0], xy[:, 1], lw=1.2, label=name, alpha=0.9)
        if start:
            ax.plot(*xy[0], "o", color=line.get_color(), ms=4)
        ax.plot(*xy[-1], "s", color=line.get_color(), ms=5)
    if nash is not None:
        ax.plot(*simplex_xy(nash), "*", color="k", ms=14, label="Nash (LP)", zorder=5)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return ax


def plot_exploitability(ax, curves: dict, loglog: bool = True, floor: float = 1e-6):
    """Exploitability per step for each named curve; log-log shows power laws as straight lines."""
    for name, values in curves.items():
        v = np.maximum(np.asarray(values, dtype=float), floor)
        steps = np.arange(len(v))
        if loglog:
            ax.loglog(steps[1:], v[1:], label=name)
        else:
            ax.plot(steps, v, label=name)
    ax.set_xlabel("step t")
    ax.set_ylabel("exploitability  max_y P(y ≻ π) − ½")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def gradient_field(loss_fn, lim: float = 3.0, n: int = 15):
    """−∇ of loss_fn(Δ_c, Δ_r) on an n×n grid over [−lim, lim]²: the directions training moves in."""
    import torch  # plots only needs torch for this one figure

    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    dc, dr = torch.meshgrid(g, g, indexing="xy")
    dc, dr = dc.clone().requires_grad_(True), dr.clone().requires_grad_(True)
    loss_fn(dc, dr).sum().backward()
    return dc.detach().numpy(), dr.detach().numpy(), -dc.grad.numpy(), -dr.grad.numpy()


def plot_gradient_field(ax, loss_fn, title: str, lim: float = 3.0, target=None):
    """Quiver of the descent direction of a pair loss in the (Δ_chosen, Δ_rejected) plane."""
    X, Y, U, V = gradient_field(loss_fn, lim)
    norm = np.hypot(U, V) + 1e-12
    ax.quiver(X, Y, U / norm, V / norm, norm, cmap="viridis", scale=25, width=0.005)
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
