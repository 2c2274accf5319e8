"""experiments.view and ``analyze --html``: a self-contained page whose numbers are results.json's, checked in a
headless Chromium (Debian's chromium + chromium-driver, driven by selenium) and without a browser."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import view as V

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    """A tiny random GPT-2-shaped checkpoint (2 layers, 2 heads, D 16, V 30) analysed by the command line with
    --html and --prompts: the output folder."""
    from flax import nnx

    from tvvar.model import TVVARModel
    from tvvar.pretrained import Pretrained, _gpt2_config, save_pretrained

    d = tmp_path_factory.mktemp("view")
    hf = {"model_type": "gpt2", "vocab_size": 30, "n_positions": 16, "n_embd": 16, "n_layer": 2, "n_head": 2}
    save_pretrained(Pretrained(TVVARModel(_gpt2_config(hf, "float32"), rngs=nnx.Rngs(0)), hf, None, "pytorch"),
                    d / "model")
    (d / "prompts.txt").write_text("3 4 5\n6 7 8\n")
    cmd = [sys.executable, "-m", "experiments.analyze", "--model", str(d / "model"), "--prompt", "3 4 5 6 7 8 9 10",
           "--prompts", str(d / "prompts.txt"), "--cont-len", "3", "--samples", "4", "--window", "4",
           "--out", str(d / "out"), "--html"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "view.html" in run.stdout
    return d / "out"


def _embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="tvvar-results">(.*?)</script>', page, re.S)
    assert m, "no embedded results"
    return json.loads(m.group(1))


# ---- without a browser -------------------------------------------------------------------------------


@pytest.mark.slow
def test_view_is_self_contained_and_embeds_the_results_unchanged(analyzed):
    page = (analyzed / "view.html").read_text(encoding="utf-8")
    results = json.loads((analyzed / "results.json").read_text())
    assert not re.search(r"https?://", page), "the page must not reach the network"
    assert not re.search(r"<script[^>]*\ssrc\s*=", page) and "<link" not in page and "@import" not in page
    assert _embedded(page) == results  # the same numbers, not re-rounded
    data = results["data"]
    T, L = data["T"], data["layers"]
    assert T == 8 and L == 2 and np.shape(data["pi"]) == (2, 1, 2, 8, 8)
    assert np.shape(data["coef_norm_rows"]) == (2, 8, 8) and len(data["surprisal"]) == T - 1
    # the window's ‖A‖ map is the corner of the full rows
    np.testing.assert_array_equal(np.asarray(data["coef_norm_rows"])[:, -4:, -4:], np.asarray(data["coef_norms"]))
    fl = data["information_flow"]
    assert np.shape(fl["density"]) == (4, 3) and len(fl["prompt_tokens"]) == 2 and len(fl["continuation_tokens"]) == 4
    # the densities are the flow's increments (Def. 8: i_t = Σ_τ≤t ι_τ), so the mean flow is their mean cumsum
    np.testing.assert_allclose(np.cumsum(fl["density"], 1).mean(0), fl["mean_flow"], atol=1e-5)


@pytest.mark.slow
def test_surprisal_is_minus_the_models_log_probability(analyzed):
    from experiments.analyze import load_model
    from tvvar.core import log_softmax32

    results = json.loads((analyzed / "results.json").read_text())
    lm = load_model(Path(results["config"]["model"]))
    ids = np.arange(3, 11)[None]
    lp = np.asarray(log_softmax32(lm.model(ids)))[0]
    want = -lp[np.arange(7), ids[0, 1:]]
    np.testing.assert_allclose(results["data"]["surprisal"], want, rtol=1e-6)


def test_html_view_escapes_tokens_and_loads_a_folder(analyzed):
    results = json.loads((analyzed / "results.json").read_text())
    results["data"]["tokens"][1] = "</script><b>x</b>"
    page = V.html_view(results)
    assert page.count("</script>") == 2 and _embedded(page)["data"]["tokens"][1] == "</script><b>x</b>"
    assert V.html_view(analyzed) == V.html_view(analyzed / "results.json") == (analyzed / "view.html").read_text()


def test_show_for_a_notebook_and_without_ipython(analyzed, monkeypatch):
    pytest.importorskip("IPython")
    shown = V.show(analyzed, height=500)
    assert "<iframe srcdoc=" in shown.data and "height:500px" in shown.data
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    with pytest.raises(ImportError, match="show\\(\\) needs IPython"):
        V.show(analyzed)


def test_bad_input_is_one_clear_error(tmp_path, analyzed):
    with pytest.raises(FileNotFoundError, match="no such file"):
        V.html_view(tmp_path / "missing")
    (tmp_path / "results.json").write_text("{broken")
    with pytest.raises(ValueError, match="is not JSON"):
        V.html_view(tmp_path)
    with pytest.raises(ValueError, match="a dict with a 'data' dict"):
        V.html_view([1, 2])
    with pytest.raises(ValueError, match=r"lacks \['coef_norm_rows', 'surprisal'\]"):
        V.html_view({"data": {"T": 3, "layers": 1, "pi": []}})
    with pytest.raises(ValueError, match="height must be a positive int"):
        V.show(analyzed, height=0)


# ---- in a browser ------------------------------------------------------------------------------------


def _browser():
    """A headless Chromium driven by selenium, or a skip that names what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)
    missing = [n for n, p in (("chromium", chromium), ("chromedriver (Debian: chromium-driver)", driver)) if not p]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found (apt-get install chromium chromium-driver; scripts/setup.sh "
                    "does it when run as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


@pytest.mark.slow
def test_the_page_shows_results_json_values_in_a_browser(analyzed):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    results = json.loads((analyzed / "results.json").read_text())
    data = results["data"]
    T, L, H = data["T"], data["layers"], len(data["pi"][0][0])
    t0 = time.perf_counter()
    drv = _browser()
    try:
        drv.get((analyzed / "view.html").as_uri())
        # every element's data attributes and text in one round trip per query
        read = lambda sel: drv.execute_script(  # noqa: E731
            "return Array.from(document.querySelectorAll(arguments[0]), "
            "e => Object.assign({text: e.textContent}, e.dataset));", sel)
        position = lambda: drv.find_element(By.ID, "detail").get_attribute("data-position")  # noqa: E731
        toks = drv.find_elements(By.CSS_SELECTOR, "#strip .tok")
        shown = read("#strip .tok")
        assert [t["text"] for t in shown] == data["tokens"]
        assert [float(t["surprisal"]) for t in shown[1:]] == data["surprisal"] and "surprisal" not in shown[0]
        for i in (5, 0, T - 1):
            toks[i].click()
            assert position() == str(i)
            pis = read("#detail .bar[data-kind=pi]")
            assert len(pis) == L * H * (i + 1)
            for b in pis:
                ly, h, j = (int(b[k]) for k in ("layer", "head", "j"))
                assert float(b["value"]) == data["pi"][ly][0][h][i][j]
            coefs = read("#detail .bar[data-kind=coef]")
            assert len(coefs) == L * (i + 1)
            for b in coefs:
                assert float(b["value"]) == data["coef_norm_rows"][int(b["layer"])][i][int(b["j"])]
            terms = {td["term"]: float(td["value"]) for td in read("#theorem6 td[data-term]")}
            assert terms == ({k: data["theorem6"][k][i] for k in ("log_p", "elbo", "gap")} if i < T - 1 else {})
        toks[5].click()  # pinned at 5; hovering 2 shows 2, leaving the strip goes back to the pinned 5
        ActionChains(drv).move_to_element(toks[2]).perform()
        assert position() == "2"
        ActionChains(drv).move_to_element(drv.find_element(By.TAG_NAME, "h1")).perform()
        assert position() == "5"
        fl = data["information_flow"]
        got = [(int(e["path"]), int(e["t"]), float(e["value"]), e["text"]) for e in read("#flow .tok:not(.prompt)")]
        assert got == [(b, t, fl["density"][b][t], fl["continuation_tokens"][b][t])
                       for b in range(fl["B"]) for t in range(fl["T"])]
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        drv.quit()
    print(f"browser part: {time.perf_counter() - t0:.1f} s")


def test_without_a_browser_the_test_skips_naming_what_is_missing(monkeypatch):
    pytest.importorskip("selenium")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    with pytest.raises(pytest.skip.Exception, match="chromium and chromedriver .Debian: chromium-driver. not found"):
        _browser()
