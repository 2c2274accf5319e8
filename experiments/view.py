"""An interactive view of ``analyze``'s results: one self-contained HTML page (``analyze --html`` → view.html).

The page holds the results dict itself, inline as JSON (the same numbers as results.json), and a little plain
JavaScript; no network, no server, no external script or style sheet. It shows

* the analysed tokens in a strip, each coloured by the model's surprisal −log p(x_i | x_{<i}) in nats (the first
  token has none);
* on hovering a token (clicking pins it), for its position i, per layer and head the π row π^h[i, j] (Theorem 5)
  and per layer the row ‖A[i, j]‖_F of the mixer's coefficient matrices (Definition 13), as bars over the tokens
  j ∈ S(i) = {0..i}, and the Theorem 6 terms of row i (log P, ELBO, posterior gap of the analysed layer). Row i
  predicts token i + 1, the index convention of docs/design.md;
* with ``--prompts``: the sampled continuations after their prompts, each token coloured by its information
  density ι_t = log P(u_t | u_{<t}, s) − log P(u_t | u_{<t}) (Def. 8), and the estimate of I(S → U).

In a notebook::

    from experiments.view import show
    show("runs/analyze")          # a results dict, a results.json, or the folder that holds it

``show`` needs IPython (imported only there); :func:`html_view` gives the page as a string.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from experiments.common import to_jsonable

__all__ = ["load_results", "html_view", "write_view", "show", "VIEW_FILE"]

VIEW_FILE = "view.html"
_NEEDS = ("T", "layers", "pi", "coef_norm_rows", "surprisal")


def load_results(results: Any) -> dict:
    """``results``: analyze's results dict, a results.json path, or the folder that holds results.json."""
    if isinstance(results, (str, Path)):
        path = Path(results)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"results: {str(path)!r}: no such file (analyze's results.json or its folder)")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"results: {str(path)!r} is not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(results, dict) or not isinstance(results.get("data"), dict):
        raise ValueError(f"results must be analyze's results (a dict with a 'data' dict), got {type(results).__name__}")
    missing = [k for k in _NEEDS if k not in results["data"]]
    if missing:
        raise ValueError(f"results['data'] lacks {missing}: not analyze's results, or from an older analyze "
                         "(rerun it)")
    return to_jsonable(results)


def _script_json(obj: dict) -> str:
    """JSON safe inside <script>: '<' (only ever inside strings) as \\u003c, so no '</script>' can end it."""
    return json.dumps(obj, allow_nan=False).replace("<", "\\u003c")


def html_view(results: Any) -> str:
    """The page (a str) for ``results`` (see :func:`load_results`); the data is embedded unchanged."""
    res = load_results(results)
    title = f"tvvar analyze — {res.get('config', {}).get('model', 'model')}"
    return (_PAGE.replace("__TITLE__", html.escape(title)).replace("__STYLE__", _STYLE)
            .replace("__SCRIPT__", _SCRIPT).replace("__DATA__", _script_json(res)))


def write_view(results: Any, out: Path | str) -> Path:
    """Write ``view.html`` into the folder ``out``; returns its path."""
    path = Path(out) / VIEW_FILE
    path.write_text(html_view(results), encoding="utf-8")
    return path


def show(results: Any, height: int = 720):
    """The view for a notebook: ``IPython.display.HTML`` of an iframe holding the page (its own document, so two
    views in one notebook do not share ids or styles)."""
    page = html_view(results)
    try:
        from IPython.display import HTML
    except ImportError:
        raise ImportError("show() needs IPython (pip install ipython); html_view(results) returns the page as a "
                          "string, and analyze --html writes it as view.html") from None
    if not (isinstance(height, int) and height > 0):
        raise ValueError(f"height must be a positive int (pixels), got {height!r}")
    return HTML(f'<div class="tvvar-view"><iframe srcdoc="{html.escape(page, quote=True)}" '
                f'style="width:100%;height:{height}px;border:0"></iframe></div>')


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>__STYLE__</style></head>
<body>
<h1>__TITLE__</h1>
<div id="summary"></div>
<h2>Tokens <small>coloured by surprisal −log p(x<sub>i</sub> | x<sub>&lt;i</sub>), nats; hover a token, click to
pin</small></h2>
<div id="legend"></div>
<div id="strip" class="strip"></div>
<div id="detail"></div>
<div id="flow"></div>
<script type="application/json" id="tvvar-results">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""

_STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 16px; } h2 { font-size: 14px; margin: 14px 0 4px; } small { font-weight: normal; color: #666; }
.strip { display: flex; flex-wrap: wrap; gap: 2px; }
.tok { padding: 2px 4px; border: 1px solid #ccc; border-radius: 3px; cursor: pointer; white-space: pre;
       font-family: ui-monospace, monospace; }
.tok.sel { outline: 2px solid #1f5fbf; } .tok.hl { outline: 2px dashed #e08000; }
.tok.prompt { color: #777; background: #f3f3f3; cursor: default; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-end; margin: 4px 0 8px; }
.cell { border: 1px solid #ddd; padding: 2px; }
.cell .lab { font-size: 10px; color: #555; }
.bars { display: flex; align-items: flex-end; height: 44px; gap: 1px; }
.bar { background: #3b6fb6; min-height: 1px; } .bar.coef { background: #a0522d; }
table.t6 td, table.t6 th { padding: 1px 8px; text-align: right; }
.pass { color: #17702f; } .fail { color: #b00020; }
#legend span { display: inline-block; width: 18px; height: 10px; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const R = JSON.parse(document.getElementById("tvvar-results").textContent);
  const D = R.data, T = D.T, L = D.layers;
  const num = (x) => (typeof x === "number" ? x : Number(x));  // non-finite values are stored as strings
  const fmt = (x) => {
    const v = num(x);
    if (!Number.isFinite(v)) return String(x);
    return v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(3) : v.toFixed(4);
  };
  const toks = D.tokens || Array.from({ length: T }, (_, i) => String(i));
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const heat = (v, vmax) => {  // white → red
    const a = Math.max(0, Math.min(1, v / (vmax || 1)));
    return `rgb(255,${Math.round(255 - 175 * a)},${Math.round(255 - 195 * a)})`;
  };
  const diverging = (v, vmax) => {  // blue (< 0) — white — red (> 0)
    const a = Math.max(-1, Math.min(1, v / (vmax || 1)));
    return a >= 0 ? heat(a, 1) : `rgb(${Math.round(255 + 175 * a)},${Math.round(255 + 120 * a)},255)`;
  };

  // summary: model, layer, checks
  const cfg = R.config || {};
  const sm = document.getElementById("summary");
  sm.appendChild(el("div", "", `${cfg.model_type || ""} · ${L} layers · T = ${T} tokens · Theorem 6 layer ` +
    `${D.layer}`));
  for (const c of R.checks || []) {
    const d = el("div", c.passed ? "pass" : "fail", `${c.passed ? "✓" : "✗"} ${c.name}: ${fmt(c.measured)}`);
    sm.appendChild(d);
  }

  // the token strip, coloured by surprisal of token i (row i − 1 of the model's output)
  const S = D.surprisal.map(num);
  const smax = Math.max(...S.filter(Number.isFinite), 1e-12);
  document.getElementById("legend").innerHTML =
    `0 <span style="background:${heat(0, 1)}"></span><span style="background:${heat(0.5, 1)}"></span>` +
    `<span style="background:${heat(1, 1)}"></span> ${smax.toFixed(3)} nats`;
  const strip = document.getElementById("strip");
  const tokEls = [];
  let pinned = null;
  for (let i = 0; i < T; i++) {
    const s = i > 0 ? S[i - 1] : null;
    const t = el("span", "tok", toks[i]);
    t.dataset.i = i;
    if (s !== null) {
      t.style.background = heat(s, smax);
      t.dataset.surprisal = String(D.surprisal[i - 1]);
    }
    t.title = `position ${i}` + (s !== null ? `, surprisal ${fmt(s)} nats` : ", first token: no surprisal");
    t.addEventListener("mouseenter", () => render(i));
    t.addEventListener("click", () => { pinned = pinned === i ? null : i; render(i); });
    strip.appendChild(t);
    tokEls.push(t);
  }
  strip.addEventListener("mouseleave", () => { if (pinned !== null) render(pinned); });

  function bars(kind, row, i, layer, head, scale) {
    const n = row.slice(i + 1).some((v) => num(v) !== 0) ? row.length : i + 1;  // S(i): causal unless not
    const box = el("div", "bars");
    const w = Math.max(2, Math.min(10, Math.floor(160 / n)));
    for (let j = 0; j < n; j++) {
      const v = num(row[j]);
      const b = el("div", "bar" + (kind === "coef" ? " coef" : ""));
      b.style.width = w + "px";
      b.style.height = Math.round(42 * Math.max(0, Math.min(1, v / scale))) + "px";
      Object.assign(b.dataset, { kind, layer, j, value: String(row[j]) });
      if (head !== null) b.dataset.head = head;
      b.title = `j = ${j} ${JSON.stringify(toks[j])}: ${fmt(v)}`;
      b.addEventListener("mouseenter", () => tokEls[j].classList.add("hl"));
      b.addEventListener("mouseleave", () => tokEls[j].classList.remove("hl"));
      box.appendChild(b);
    }
    return box;
  }

  function render(i) {
    tokEls.forEach((t, k) => t.classList.toggle("sel", k === (pinned === null ? i : pinned) || k === i));
    const det = document.getElementById("detail");
    det.innerHTML = "";
    det.dataset.position = i;
    const next = i + 1 < T ? ` — row ${i} predicts token ${i + 1} ${JSON.stringify(toks[i + 1])}, surprisal ` +
      `${fmt(D.surprisal[i])} nats` : " — the last position (no next token)";
    det.appendChild(el("h2", "", `Position ${i} ${JSON.stringify(toks[i])}${next}` +
      (pinned === i ? " (pinned)" : "")));
    // Theorem 6 terms of row i
    const th = D.theorem6;
    if (th && i < T - 1) {
      const tb = el("table", "t6");
      tb.id = "theorem6";
      tb.appendChild(el("tr")).append(el("th", "", `Theorem 6, layer ${D.layer}`), el("th", "", "nats"));
      for (const [k, name] of [["log_p", "log P"], ["elbo", "ELBO"], ["gap", "gap KL(Q ‖ P(J | U))"]]) {
        const tr = el("tr");
        const td = el("td", "", fmt(th[k][i]));
        Object.assign(td.dataset, { term: k, value: String(th[k][i]) });
        tr.append(el("td", "", name), td);
        tb.appendChild(tr);
      }
      det.appendChild(tb);
    } else {
      det.appendChild(el("div", "", th ? "Theorem 6: no term at the last position" :
        `Theorem 6: ${D.theorem6_skipped || "not computed"}`));
    }
    // per layer: π rows of every head, then ‖A[i, j]‖
    for (let l = 0; l < L; l++) {
      det.appendChild(el("h2", "", `layer ${l}`));
      const grid = el("div", "grid");
      const pi = D.pi.length === L ? D.pi[l][0] : null;  // [H, T, T] of batch row 0
      if (pi) {
        pi.forEach((ph, h) => {
          const c = el("div", "cell");
          c.append(el("div", "lab", `head ${h}: π[${i}, j]`), bars("pi", ph[i], i, l, h, 1));
          grid.appendChild(c);
        });
      }
      const row = D.coef_norm_rows[l][i];
      const c = el("div", "cell");
      const m = Math.max(...row.map(num).filter(Number.isFinite), 1e-30);
      c.append(el("div", "lab", `‖A[${i}, j]‖_F (max ${fmt(m)})`), bars("coef", row, i, l, null, m));
      grid.appendChild(c);
      det.appendChild(grid);
    }
  }

  // the information flow of sampled continuations (--prompts)
  const F = D.information_flow;
  if (F && F.density) {
    const box = document.getElementById("flow");
    box.appendChild(el("h2", "", `Information flow: I(S → U) ≈ ${fmt(F.directed_information)} ± ` +
      `${fmt(F.directed_information_se)} nats (K = ${F.K} prompts, B = ${F.B} continuations of ${F.T} tokens); ` +
      "continuation tokens coloured by their information density ι_t (red > 0, blue < 0)"));
    const dmax = Math.max(...F.density.flat().map((v) => Math.abs(num(v))).filter(Number.isFinite), 1e-12);
    F.density.forEach((drow, b) => {
      const s = el("div", "strip");
      s.dataset.path = b;
      for (const p of F.prompt_tokens[F.prompt_index[b]]) s.appendChild(el("span", "tok prompt", p));
      drow.forEach((v, t) => {
        const e = el("span", "tok", F.continuation_tokens[b][t]);
        e.style.background = diverging(num(v), dmax);
        Object.assign(e.dataset, { path: b, t, value: String(v) });
        e.title = `ι = ${fmt(v)} nats`;
        s.appendChild(e);
      });
      box.appendChild(s);
    });
  }
  render(T - 1);
})();
"""
