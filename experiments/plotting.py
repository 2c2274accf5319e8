"""The one plotting module of the experiments and ``analyze``: every figure is drawn with these helpers and saved
with :func:`experiments.common.save_figure`, so all figures share one set of conventions:

* every axes has an x and a y label, with units where the quantity has one (:data:`NATS`, :data:`BITS`,
  :func:`nats`, …); a label on a shared axis (``sharex`` / ``sharey``) counts for its siblings, as
  ``label_outer`` draws it;
* a token or position axis has integer ticks only, in absolute positions (a window of positions 10..25 is
  labelled 10..25, not 0..15), and the tokens themselves as tick labels when there are at most
  :data:`MAX_TOKEN_LABELS` (:func:`token_axis`, :func:`heatmap`);
* every image (``AxesImage`` / ``QuadMesh``) has a colourbar — its own, or one it shares with images of the same
  colour map and scale (:func:`heatmap` always adds one);
* the layout is constrained (:func:`subplots`), so titles, colourbars and labels do not overlap.

:func:`violations` lists the conventions a figure breaks that can be checked mechanically; ``save_figure``
calls :func:`audit` on every figure it saves. By default a breach is a warning. Inside ``with strict():`` it
raises :class:`FigureConventionError` (after the file is written), and ``with recording() as saved:`` collects
``{"name", "violations"}`` for every figure saved. ``tests/test_figures.py`` uses both; the clean tiny runs of
``tests/test_mutants.py`` run under :func:`strict`, so every figure of every experiment is checked at the size
those runs already pay for.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["MAX_TOKEN_LABELS", "DPI", "NATS", "BITS", "BAND", "FigureConventionError", "subplots", "token_axis",
           "heatmap", "nats", "bits", "positions_label", "quantiles", "band", "flow_panels", "highlighted",
           "integer_ticks", "violations", "audit", "strict", "recording"]

#: token labels are drawn as ticks on position axes up to this many positions
MAX_TOKEN_LABELS = 64
#: the resolution ``save_figure`` writes at (tests/test_figures.py lowers it: the checks do not depend on it)
DPI = 110
NATS = "nats"
BITS = "bits"
_TOKEN_AXES = "_tvvar_token_axes"  # the attribute that marks an axes' token/position axes ("x", "y")


class FigureConventionError(AssertionError):
    """A saved figure breaks a convention of :mod:`experiments.plotting` (raised only under :func:`strict`)."""


def nats(quantity: str, per: str | None = None) -> str:
    """An axis label with its unit: ``nats("D", "token")`` → ``"D (nats/token)"``."""
    return f"{quantity} (nats{'/' + per if per else ''})"


def bits(quantity: str, per: str | None = None) -> str:
    """An axis label in bits: ``bits("rate", "token")`` → ``"rate (bits/token)"``."""
    return f"{quantity} (bits{'/' + per if per else ''})"


def positions_label(name: str = "position", letter: str | None = None) -> str:
    """``positions_label("key position", "j")`` → ``"key position j"``."""
    return f"{name} {letter}" if letter else name


def subplots(nrows: int = 1, ncols: int = 1, **kw):
    """``plt.subplots`` with the constrained layout (titles, colourbars and labels do not overlap)."""
    import matplotlib.pyplot as plt

    if "layout" not in kw and not kw.get("constrained_layout") and not kw.get("tight_layout"):
        kw["layout"] = "constrained"
    return plt.subplots(nrows, ncols, **kw)


def _mark(ax, which: str) -> None:
    setattr(ax, _TOKEN_AXES, set(getattr(ax, _TOKEN_AXES, set())) | set(which))


def token_axis(ax, which: str = "x", positions: Sequence[int] | None = None, labels: Sequence[str] | None = None,
               label: str | None = None) -> None:
    """Make ``which`` (``"x"``, ``"y"`` or ``"xy"``) of ``ax`` a token/position axis: integer ticks only and, with
    ``labels`` (one per entry of ``positions``) and at most :data:`MAX_TOKEN_LABELS` of them, the tokens as tick
    labels at their positions. ``positions``: the absolute positions the data is drawn at (the caller draws at
    these coordinates — :func:`heatmap` does); ``label``: the axis label (kept if None)."""
    from matplotlib.ticker import MaxNLocator

    if which not in ("x", "y", "xy"):
        raise ValueError(f"which must be 'x', 'y' or 'xy', got {which!r}")
    if labels is not None:
        if positions is None:
            raise ValueError("token labels need the positions they label")
        if len(labels) != len(positions):
            raise ValueError(f"labels and positions must have one entry each, got {len(labels)} and {len(positions)}")
    for w in which:
        axis = ax.xaxis if w == "x" else ax.yaxis
        if labels is not None and len(labels) <= MAX_TOKEN_LABELS:
            ticks = [int(p) for p in positions]
            small = 7 if len(ticks) <= 24 else 5
            if w == "x":
                ax.set_xticks(ticks, [_show(t) for t in labels], rotation=90, fontsize=small)
            else:
                ax.set_yticks(ticks, [_show(t) for t in labels], fontsize=small)
        else:
            axis.set_major_locator(MaxNLocator(integer=True))
        if label is not None:
            axis.set_label_text(label)
        _mark(ax, w)


def _show(token: str) -> str:
    """A token as a tick label: whitespace made visible, mathtext's ``$`` escaped."""
    s = str(token).replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
    return s if s.strip() else repr(s)


def heatmap(ax, M, positions: Sequence[int] | None = None, labels: Sequence[str] | None = None,
            cbar_label: str = "", *, cols: Sequence[int] | None = None, col_labels: Sequence[str] | None = None,
            xlabel: str = "key position j", ylabel: str = "query position i", token_axes: str = "xy", **imshow_kw):
    """Draw matrix ``M`` [rows, columns] on ``ax`` with a colourbar labelled ``cbar_label``; returns the image.

    Row r is drawn at absolute position ``positions[r]`` (default r) and column c at ``cols[c]`` (default: the
    row positions for a square map, else c); ``token_axes`` names the axes that are token/position axes
    (:func:`token_axis`: integer ticks, token ``labels`` / ``col_labels`` when short enough); ``""`` for a map
    whose axes are not positions. Other keywords go to ``imshow``.
    """
    M = np.asanyarray(M)  # a masked array keeps its mask (blank cells)
    if M.ndim != 2:
        raise ValueError(f"M must be a matrix [rows, columns], got shape {M.shape}")
    n, m = M.shape
    rows = np.arange(n) if positions is None else np.asarray(positions)
    if cols is None:
        cols = rows if (n == m and col_labels is None) else np.arange(m)
        col_labels = labels if (n == m and col_labels is None) else col_labels
    cols = np.asarray(cols)
    if len(rows) != n or len(cols) != m:
        raise ValueError(f"positions ({len(rows)}) and cols ({len(cols)}) must match M's shape {M.shape}")
    kw = {"cmap": "viridis", "aspect": "auto", "interpolation": "nearest"} | imshow_kw
    im = ax.imshow(M, extent=(cols[0] - 0.5, cols[-1] + 0.5, rows[-1] + 0.5, rows[0] - 0.5), **kw)
    ax.figure.colorbar(im, ax=ax, label=cbar_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if "x" in token_axes:
        token_axis(ax, "x", cols, col_labels)
    if "y" in token_axes:
        token_axis(ax, "y", rows, labels)
    return im


# ---------------------------------------------------------------------------------------------- the checks


def _is_colorbar(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def _label_of(ax, which: str) -> str:
    return (ax.get_xlabel() if which == "x" else ax.get_ylabel()).strip()


def _has_label(ax, which: str) -> bool:
    if _label_of(ax, which):
        return True
    shared = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
    if any(_label_of(s, which) for s in shared.get_siblings(ax)):
        return True
    sup = getattr(ax.figure, "_supxlabel" if which == "x" else "_supylabel", None)
    return bool(sup is not None and sup.get_text().strip())


def _scale(im) -> tuple:
    norm = im.norm
    return (type(norm).__name__, im.get_cmap().name, norm.vmin, norm.vmax)


def violations(fig) -> list[str]:
    """The conventions ``fig`` breaks (module docstring), one line each; empty when it keeps them all.
    Draw the figure first (``save_figure`` checks after saving) so tick positions are final."""
    from matplotlib.collections import QuadMesh
    from matplotlib.image import AxesImage

    out = []
    images = []
    for k, ax in enumerate(fig.axes):
        if _is_colorbar(ax) or not ax.get_visible():
            continue
        name = f"axes {k}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        images += [im for im in ax.get_children() if isinstance(im, (AxesImage, QuadMesh))]
        if ax.axison:
            out += [f"{name}: no {w} label" for w in "xy" if not _has_label(ax, w)]
        for w in sorted(getattr(ax, _TOKEN_AXES, set())):
            lo, hi = sorted(ax.get_xlim() if w == "x" else ax.get_ylim())
            ticks = (ax.xaxis if w == "x" else ax.yaxis).get_majorticklocs()
            bad = [float(t) for t in ticks if lo - 1e-9 <= t <= hi + 1e-9 and abs(t - round(t)) > 1e-9]
            if bad:
                out.append(f"{name}: token axis {w} has ticks at fractional positions {bad}")
    with_bar = {_scale(im) for im in images if im.colorbar is not None}
    for im in images:
        if im.colorbar is None and _scale(im) not in with_bar:
            out.append(f"an image ({type(im).__name__}) without a colourbar (nor one shared at its scale)")
    return out


_COLLECTORS: list[tuple[list, bool]] = []


def audit(fig, name: str) -> list[str]:
    """Check ``fig`` (saved as ``name``): record it in every active :func:`recording`, raise under :func:`strict`,
    otherwise warn about each breach. Returns the breaches."""
    found = violations(fig)
    for saved, _ in _COLLECTORS:
        saved.append({"name": name, "violations": found})
    if found:
        msg = f"figure {name} breaks the plotting conventions: " + "; ".join(found)
        if any(s for _, s in _COLLECTORS):
            raise FigureConventionError(msg)
        warnings.warn(msg, stacklevel=3)
    return found


@contextlib.contextmanager
def recording(strict: bool = False) -> Iterator[list[dict]]:
    """Collect ``{"name", "violations"}`` for every figure saved inside the block (and raise on a breach if
    ``strict``)."""
    saved: list[dict] = []
    entry = (saved, strict)
    _COLLECTORS.append(entry)
    try:
        yield saved
    finally:
        _COLLECTORS.remove(entry)


def strict() -> contextlib.AbstractContextManager[list[dict]]:
    """Inside the block a figure that breaks a convention raises :class:`FigureConventionError` when saved."""
    return recording(strict=True)


#: the percentiles of a band: the 10–90 % band and the median
BAND = (10.0, 50.0, 90.0)


def quantiles(paths) -> np.ndarray:
    """The :data:`BAND` percentiles of ``paths`` [n, T] at each t: [3, T] (low, median, high)."""
    return np.nanpercentile(np.asarray(paths, float), BAND, axis=0)


def band(ax, x, q, *, color: str = "C0", label: str = "") -> None:
    """The median ``q[1]`` over ``x`` and the band ``q[0]``..``q[2]`` of :func:`quantiles`."""
    lo, med, hi = np.asarray(q, float)
    ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0,
                    label=f"{label}: {BAND[0]:g}–{BAND[2]:g} % of paths" if label else None)
    ax.plot(x, med, color=color, lw=2, label=f"{label}: median" if label else None)


def flow_panels(ax_flow, ax_comp, t, flow_q, comp_q, flow_paths=(), comp_paths=(), *, H: float | None = None,
                flow_name: str = "i(S → U_{≤t})", comp_name: str = "A_t") -> None:
    """The information-flow figure's two panels: on ``ax_flow`` the median and 10–90 % band of the flow over the
    output tokens ``t`` with the highlighted ``flow_paths`` (at most 5) and H(S) if given; on ``ax_comp`` the
    compensator's median and band with the same paths' compensators. ``*_q``: :func:`quantiles` [3, T]."""
    if len(flow_paths) > 5 or len(comp_paths) > 5:
        raise ValueError("highlight at most 5 paths; the band shows the rest")
    for ax, q, paths, name, color in ((ax_flow, flow_q, flow_paths, flow_name, "C0"),
                                      (ax_comp, comp_q, comp_paths, comp_name, "C1")):
        band(ax, t, q, color=color, label=name)
        for k, p in enumerate(paths):
            ax.plot(t, p, color=color, lw=0.8, alpha=0.8, ls=(0, (1 + k, 1)), label="single paths" if k == 0 else None)
        if H is not None:
            ax.axhline(H, color="k", lw=0.8, ls=":", label="H(S)")
        token_axis(ax, "x", label="output token t")
        ax.set_ylabel(nats(name))
        ax.legend(fontsize=7)


def highlighted(n: int, k: int = 5) -> list[int]:
    """At most ``k`` indices spread evenly over ``range(n)`` (the paths a figure draws one by one)."""
    k = min(k, n)
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)}) if k > 0 else []


def integer_ticks(ax, which: str = "x") -> None:
    """Integer ticks on a non-position count axis (steps, samples); does not mark it as a token axis."""
    from matplotlib.ticker import MaxNLocator

    for w in which:
        (ax.xaxis if w == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))

