"""`gemmascope eval` on Gemma 3: an SAE exported for the tiny Gemma 3 is evaluated from the command
line (offline), on the model named by `--model` and built by its registered `load`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from saelens_gemmascope.cli import main
from saelens_gemmascope.demo.tiny_gemma3 import TINY_GEMMA3_NAME
from saelens_gemmascope.directory.layout import export_gemmascope_sae
from saelens_gemmascope.models.lookup import hook_point


@pytest.mark.parametrize("site", ["res", "mlp"])
def test_gemmascope_eval_runs_on_tiny_gemma3(
    site: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    point = hook_point(TINY_GEMMA3_NAME, site, 2)
    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=point.d_in, d_sae=32))
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = point.tl_hook, TINY_GEMMA3_NAME
    export_gemmascope_sae(sae, tmp_path / "export", average_l0=10.0)
    out = tmp_path / "eval"
    argv = ["eval", str(tmp_path / "export"), "--all", "--model", TINY_GEMMA3_NAME, "--device", "cpu"]
    code = main([*argv, "--n-sequences", "2", "--context-size", "64", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads(next(out.rglob("metrics.json")).read_text())
    assert results["settings"]["model"] == TINY_GEMMA3_NAME
    (row,) = results["saes"]
    assert (row["hook_name"], row["site"], row["layer"], row["d_sae"]) == (point.tl_hook, site, 2, 32)
    metrics = row["metrics"]
    assert (
        metrics["n_tokens"] > 0
        and math.isfinite(metrics["ce_clean"])
        and math.isfinite(metrics["delta_loss"])
    )
    # The splice changed the model's output: the SAE was applied at its Gemma 3 hook.
    assert metrics["ce_spliced"] != metrics["ce_clean"]
