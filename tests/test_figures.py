"""The figure conventions of ``experiments/plotting.py`` (labelled axes, integer ticks in absolute positions on
token axes, token labels, a colourbar for every image), and that the experiments' figures keep them.

How every figure of every experiment is checked, cheaply: ``experiments.common.save_figure`` — the one way a
figure is saved — runs ``experiments.plotting.audit`` on each figure it writes, and ``tests/test_mutants.py``
runs every experiment clean at its ``tiny()`` size inside ``experiments.plotting.strict()``, so a figure that
breaks a convention fails that run. Those runs are already paid for by the mutant kit, so no experiment is run
again here. This module tests the checker itself (each convention caught, a negative case for each), the helpers,
and renders, on small synthetic inputs and with no model, the figures whose drawing functions take their data
directly: ``analyze``'s π, ‖A_ij‖, Theorem 6 and flow figures and semantic_information's figures. The whole
module takes a few seconds.
"""

import warnings

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from experiments import plotting as P  # noqa: E402
from experiments.common import save_figure  # noqa: E402


@pytest.fixture(autouse=True)
def _low_resolution(monkeypatch):
    """Draw small: the conventions do not depend on the resolution, the runtime does."""
    monkeypatch.setattr(P, "DPI", 20)


def _ticks(ax, which):
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    return [t for t in (ax.get_xticks() if which == "x" else ax.get_yticks()) if lo <= t <= hi]


def test_heatmap_has_a_colourbar_absolute_integer_positions_and_labelled_axes():
    fig, ax = P.subplots()
    P.heatmap(ax, np.random.default_rng(0).random((16, 16)), range(10, 26), cbar_label="π")
    fig.canvas.draw()
    assert ax.images[0].colorbar is not None and ax.images[0].colorbar.ax.get_ylabel() == "π"
    for w in "xy":
        ticks = _ticks(ax, w)
        assert ticks and all(float(t).is_integer() and 10 <= t <= 25 for t in ticks), ticks
    assert ax.get_xlabel() and ax.get_ylabel()
    assert P.violations(fig) == []


def test_token_labels_up_to_the_limit_then_integer_ticks():
    fig, ax = P.subplots()
    toks = [f"t{k}" for k in range(12)]
    P.heatmap(ax, np.eye(12), range(5, 17), toks, "x")
    assert [t.get_text() for t in ax.get_xticklabels()] == toks
    assert list(ax.get_xticks()) == list(range(5, 17))
    fig2, ax2 = P.subplots()
    n = P.MAX_TOKEN_LABELS + 1
    P.heatmap(ax2, np.eye(n), range(n), [str(k) for k in range(n)], "x")
    fig2.canvas.draw()
    assert len(_ticks(ax2, "x")) < n and all(float(t).is_integer() for t in _ticks(ax2, "x"))
    with pytest.raises(ValueError, match="one entry each"):
        P.token_axis(ax, "x", range(3), ["a"])
    with pytest.raises(ValueError, match="'x', 'y' or 'xy'"):
        P.token_axis(ax, "z")


def test_a_figure_breaking_each_convention_is_caught():
    fig, ax = P.subplots(1, 3)
    ax[0].plot([0, 1], [0, 1])
    ax[0].set_xlabel("t")  # no y label
    ax[1].imshow(np.eye(3))  # an image with no colourbar, axes without labels
    ax[2].plot(np.arange(3), np.arange(3))
    ax[2].set(xlabel="position", ylabel="nats")
    P.token_axis(ax[2], "x")
    ax[2].set_xticks([0, 0.5, 1, 1.5, 2])  # fractional ticks on a token axis
    fig.canvas.draw()
    found = P.violations(fig)
    assert any("axes 0" in v and "no y label" in v for v in found), found
    assert any("axes 1" in v and "no x label" in v for v in found), found
    assert any("without a colourbar" in v for v in found), found
    assert any("fractional positions [0.5, 1.5]" in v for v in found), found
    matplotlib.pyplot.close(fig)


def test_shared_labels_and_a_shared_colourbar_count():
    fig, ax = P.subplots(1, 2, sharey=True)
    ims = [a.imshow(np.eye(3), vmin=0, vmax=1) for a in ax]
    for a in ax:
        a.set_xlabel("key position j")
    ax[0].set_ylabel("query position i")
    fig.colorbar(ims[1], ax=list(ax))
    assert P.violations(fig) == []
    ims[0].set_clim(0, 2)  # another scale: the shared colourbar no longer reads it
    assert any("without a colourbar" in v for v in P.violations(fig))
    matplotlib.pyplot.close(fig)


def _bad_figure():
    fig, ax = P.subplots()
    ax.plot([0, 1])
    return fig


def test_save_figure_warns_records_and_raises_under_strict(tmp_path):
    with pytest.warns(UserWarning, match="no x label"):
        save_figure(_bad_figure(), tmp_path, "bad.png")
    assert (tmp_path / "bad.png").is_file()
    with P.recording() as saved, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_figure(_bad_figure(), tmp_path, "bad2.png")
    assert saved[0]["name"] == "bad2.png" and len(saved[0]["violations"]) == 2
    with pytest.raises(P.FigureConventionError, match="bad3.png"), P.strict():
        save_figure(_bad_figure(), tmp_path, "bad3.png")
    assert not P._COLLECTORS  # the context is left cleanly after the error


def test_figures_off_closes_without_rendering_and_only_inside_its_block(tmp_path):
    """The mutant kit's runs under a mutant use figures_off: nothing is laid out, audited or written, every figure
    is closed, and the next figure outside the block is saved (and audited) again."""
    import matplotlib.pyplot as plt

    from experiments.common import figures_off

    off, on = _bad_figure(), _bad_figure()
    with figures_off(), P.strict():
        assert save_figure(off, tmp_path, "off.png") == "off.png"  # no audit: no error under strict
    assert not (tmp_path / "off.png").exists() and off.number not in plt.get_fignums()
    with pytest.warns(UserWarning, match="no x label"):
        save_figure(on, tmp_path, "on.png")
    assert (tmp_path / "on.png").is_file() and on.number not in plt.get_fignums()


def test_flow_panels_refuse_more_than_five_paths():
    fig, ax = P.subplots(1, 2)
    q = np.zeros((3, 4))
    with pytest.raises(ValueError, match="at most 5"):
        P.flow_panels(ax[0], ax[1], np.arange(1, 5), q, q, np.zeros((6, 4)))
    assert P.highlighted(100, 5) == [0, 25, 50, 74, 99] and P.highlighted(3, 5) == [0, 1, 2]
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_analyze_figures_keep_the_conventions(tmp_path):
    from experiments import analyze as X

    rng = np.random.default_rng(0)
    T, W = 20, 12
    toks = [chr(97 + k) for k in range(T)]
    with P.strict() as saved:
        X._pi_figure(rng.dirichlet(np.ones(T), (5, T)), 0, tmp_path, 16, toks)
        X._pi_figure(rng.dirichlet(np.ones(T), (2, T)), 1, tmp_path, 16, None)
        X._coef_norm_figure(rng.random((W, W)), 0, T, tmp_path, toks)
        X._theorem6_figure({"log_p": -rng.random(T - 1), "elbo": -rng.random(T - 1) - 1,
                            "gap": rng.random(T - 1)}, 1, tmp_path, toks)
        X._flow_figure(rng.normal(size=(64, 8)).cumsum(1), rng.random((64, 8)).cumsum(1), tmp_path, K=3,
                      estimate=0.9, estimate_se=0.1, estimate_name="Rao–Blackwell")
    assert [s["name"] for s in saved] == ["pi_layer0.png", "pi_layer1.png", "coef_norm_layer0.png",
                                          "theorem6_layer1.png", "flow.png"]


def test_coefficient_window_is_labelled_by_absolute_position(tmp_path, monkeypatch):
    from experiments import analyze as X

    seen = {}
    real = X.save_figure

    def spy(fig, out, name):
        ax = fig.axes[0]
        fig.canvas.draw()
        seen[name] = (_ticks(ax, "x"), [t.get_text() for t in ax.get_yticklabels()])
        return real(fig, out, name)

    monkeypatch.setattr(X, "save_figure", spy)
    X._coef_norm_figure(np.ones((16, 16)), 0, 26, tmp_path, None)
    X._coef_norm_figure(np.ones((4, 4)), 1, 8, tmp_path, list("abcdefgh"))
    ticks, _ = seen["coef_norm_layer0.png"]
    assert min(ticks) >= 10 and max(ticks) <= 25 and all(float(t).is_integer() for t in ticks), ticks
    assert seen["coef_norm_layer1.png"][1] == list("efgh")  # the window's own tokens


def _semantic_information_data(cfg):
    rng = np.random.default_rng(0)
    T, K = cfg.cont_len, cfg.num_prompts
    paths = rng.random((12, T)).cumsum(1)
    return {"paths_flow": paths.tolist(), "paths_A": (paths / 2).tolist(), "paths_M": (paths / 2).tolist(),
            "flow_band": P.quantiles(paths).tolist(), "A_band": P.quantiles(paths / 2).tolist(),
            "M_mean": [0.0] * T, "M_se": [0.1] * T, "drift_values": rng.random(100).tolist(),
            "freedman_alpha": [0.5, 1.0, 2.0], "freedman_beta": [0.5, 1.0],
            "freedman_empirical": rng.random((3, 2)).tolist(), "freedman_printed": rng.random((3, 2)).tolist(),
            "freedman_with_c": rng.random((3, 2)).tolist(), "freedman_c": 1.5, "model_di_mc": 0.8,
            "model_di_mc_se": 0.05, "source_rate": 0.3, "step": [0, 40, 80], "D": [0.5, 0.2, 0.1],
            "R": [0.1, 0.25, 0.3], "rpre_D": [0.0, 0.5, 1.0], "rpre_R": [1.0, 0.4, 0.0],
            "eq18_points": [{"lambda": 3.0, "D": 0.3, "R": 0.5, "D_exact": 0.28, "R_exact": 0.52}],
            "heuristics": {"unigram": {"mean_abs_drift": 0.2}, "uniform": {"mean_abs_drift": 0.4}},
            "model_capacity_prior": (np.ones(K) / K).tolist(), "prompt_probs": (np.ones(K) / K).tolist(),
            "rpost_W": [0.1, 0.5, 0.9], "rpost_R": [0.0, 0.3, 1.0]}


def test_semantic_information_figures_keep_the_conventions_and_label_training_steps(tmp_path, monkeypatch):
    from experiments import semantic_information as S

    cfg = S.Config.quick()
    texts = {}
    real = S.save_figure

    def spy(fig, out, name):
        texts[name] = [t.get_text() for ax in fig.axes for t in ax.texts] + [fig.get_suptitle()]
        return real(fig, out, name)

    monkeypatch.setattr(S, "save_figure", spy)
    with P.strict() as saved:
        names = S._figures(tmp_path, _semantic_information_data(cfg), cfg)
    assert names == ["flow_doob_freedman.png", "rate_distortion.png", "capacity.png"] == [s["name"] for s in saved]
    assert {"step 0", "step 40", "step 80"} <= set(texts["rate_distortion.png"])
    assert "I(S → U) = 0.800 ± 0.050 nats" in texts["flow_doob_freedman.png"][-1]


def test_every_experiment_draws_through_the_plotting_module():
    """No experiment makes its own figures with pyplot: the conventions live in experiments/plotting.py."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "experiments"
    direct = [p.name for p in sorted(root.glob("*.py")) if p.name not in ("plotting.py", "common.py")
              and ("pyplot" in p.read_text() or "plt.subplots" in p.read_text())]
    assert not direct, f"figures drawn with pyplot directly (use experiments.plotting): {direct}"
