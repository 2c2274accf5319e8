"""The CPU-safe parts of the device check (scripts/device_check.sh): FLOP counter, verdicts, summary table."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from experiments import device_check as dc
from experiments.benchmarks.peers import mfu, step_flops

ROOT = Path(__file__).resolve().parents[1]


def test_step_flops_by_hand():
    """L=1, D=2, H=1, K=2, d_ff=8, V=3, B=1, T=4: params 4·2·1·2 + 2·2·8 = 48; 6·48·4 + 6·4·2·3 + 6·1·1·2·16."""
    f = step_flops(B=1, T=4, L=1, D=2, H=1, K=2, V=3)
    assert f["non_embedding_params"] == 48
    assert f["dense"] == 6 * 48 * 4 == 1152
    assert f["readout"] == 6 * 4 * 2 * 3 == 144
    assert f["attention"] == 6 * 1 * 1 * 1 * 2 * 16 == 192
    assert f["total"] == 1152 + 144 + 192


def test_step_flops_of_the_issue_benchmark_model():
    """The issue's figure: about 169 GFLOP per step for 4 layers, B 4, T 512, H 8, K 64, V 256."""
    total = step_flops(B=4, T=512, L=4, D=512, H=8, K=64, V=256)["total"]
    assert 160e9 < total < 175e9, total


def test_step_flops_and_mfu_refuse_bad_input():
    with pytest.raises(ValueError, match="T must be an int ≥ 1"):
        step_flops(B=1, T=0, L=1, D=2, H=1, K=2, V=3)
    with pytest.raises(ValueError, match="step_s and rate must be > 0"):
        mfu(1.0, 0.0, 1.0)
    assert mfu(100.0, 2.0, 100.0) == 0.5


def test_rows_and_verdicts_can_fail():
    assert dc.row("x", 0.01, 0.02, "<=")["passed"] is True
    assert dc.row("x", 0.03, 0.02, "<=")["passed"] is False  # a cuDNN error above tolerance fails
    assert dc.row("x", 0.30, dc.MFU_TARGET, ">=")["passed"] is False  # MFU below 35 % fails
    assert dc.row("x", float("nan"), 1.0, "<=")["passed"] is False
    assert dc.row("x", None, 1.0, "<=", skipped="no GPU")["passed"] is None
    with pytest.raises(ValueError, match="relation must be"):
        dc.row("x", 1.0, 1.0, "==")


def test_summary_table_shows_every_verdict():
    rows = [dc.row("a", 0.01, 0.02, "<="), dc.row("b", 0.5, 0.35, ">="), dc.row("c", 0.1, 0.35, ">="),
            dc.row("d", None, 0.02, "<=", skipped="no GPU"), dc.row("e", 3.0, None, "report", "x")]
    t = dc.summary_table(rows).splitlines()
    assert t[0].startswith("| check | measured | target | verdict")
    assert len(t) == 2 + len(rows)
    assert "| met |" in t[2] and "| met |" in t[3] and "NOT met" in t[4]
    assert "skipped: no GPU" in t[5] and "| reported |" in t[6]


def test_peak_lookup():
    assert dc.peak_bf16("NVIDIA H200") == 989e12
    assert dc.peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert dc.peak_bf16("TPU v5 lite") == 197e12  # the longer name wins over "TPU v5"
    assert dc.peak_bf16("cpu") is None


@pytest.mark.slow
def test_device_check_script_runs_quick_on_cpu(tmp_path):
    """The prepared script end to end at --quick sizes: cuDNN rows skipped with their reason, the rest run."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads((tmp_path / "device_check.json").read_text())
    rows = {x["check"]: x for x in info["rows"]}
    assert all(x["skipped"].startswith("no GPU") for k, x in rows.items() if k.startswith("(a)"))
    sharded = next(x for k, x in rows.items() if k.startswith("(d)"))
    assert sharded["passed"] is True and "data=2" in sharded["detail"]
    assert any(k.startswith("(b)") and x["measured"] and x["measured"] > 0 for k, x in rows.items())
    assert any(k.startswith("(c)") and x["measured"] and x["measured"] > 0 for k, x in rows.items())
    assert "| check | measured |" in r.stdout
