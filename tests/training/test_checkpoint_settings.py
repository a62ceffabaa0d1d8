"""A resume compares the run's settings with those its checkpoint saved (``runners.checkpoints``).

Settings added to the SAE config after release are absent from older checkpoints' saved settings:
an absent one compares as the value the old run trained with, so an old run resumes when nothing
that matters changed, and is refused, saying how to resume with the old form, when something did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sae_lens.constants import RUNNER_CFG_FILENAME

from saelens_gemmascope.recipe import (
    gemmascope_ladder,
    gemmascope_multi_runner_config,
    gemmascope_runner_config,
)
from saelens_gemmascope.recipe.config import gemmascope_sae_config
from saelens_gemmascope.runners.checkpoints import (
    ChangedSettingsError,
    changed_settings,
    refuse_changed_settings,
)

HOOK = "blocks.0.hook_resid_post"
ADDED_LAST = ("frequency_input_gradient", "matryoshka_widths")


def _single(**sae: Any) -> dict[str, Any]:
    cfg = gemmascope_sae_config(8, 16, **sae)
    return gemmascope_runner_config(cfg, model_name="tiny", hook_name=HOOK, training_tokens=1024).to_dict()


def _ladder(**sae: Any) -> dict[str, Any]:
    ladder = gemmascope_ladder(8, 16, (1e-3, 2e-3), **sae)
    return gemmascope_multi_runner_config(ladder, HOOK, model_name="tiny", training_tokens=1024).to_dict()


def _sae_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [config["sae"]] if "sae" in config else list(config["saes"].values())


def _written_before(config: dict[str, Any], fields: tuple[str, ...] = ADDED_LAST) -> dict[str, Any]:
    """``config`` as a checkpoint written before ``fields`` existed saved it (JSON, without them)."""
    saved = json.loads(json.dumps(config))
    for sae in _sae_configs(saved):
        for name in fields:
            del sae[name]
            del sae["metadata"]["training_architecture_details"][name]
    return saved


def _checkpoint(folder: Path, saved: dict[str, Any]) -> Path:
    folder.mkdir()
    (folder / RUNNER_CFG_FILENAME).write_text(json.dumps(saved))
    return folder


@pytest.mark.parametrize("build", [_single, _ladder])
def test_an_old_run_without_the_frequency_penalty_resumes(build: Any, tmp_path: Path) -> None:
    current = build()  # κ at its new default 1.0: no effect while the penalty is off
    assert all(sae["frequency_input_gradient"] == 1.0 for sae in _sae_configs(current))
    saved = _written_before(current)
    assert changed_settings(saved, current) == []
    refuse_changed_settings(_checkpoint(tmp_path / "old", saved), current)  # does not raise
    # Still a change: a setting that was saved, and one added that the old run did not have.
    current["lr"] = 0.5
    for sae in _sae_configs(current):
        sae["matryoshka_widths"] = [8, 16]
    key = "sae" if "sae" in current else "saes[*]"
    assert changed_settings(saved, current) == [
        f"lr: {json.dumps(saved['lr'])} -> 0.5",
        f"{key}.matryoshka_widths: null (not saved: the checkpoint predates this setting) -> [8, 16]",
    ]


@pytest.mark.parametrize("build", [_single, _ladder])
def test_an_old_run_with_the_frequency_penalty_is_refused_saying_how_to_resume_it(
    build: Any, tmp_path: Path
) -> None:
    current = build(frequency_penalty=100.0)
    checkpoint = _checkpoint(tmp_path / "old", _written_before(current))
    with pytest.raises(ChangedSettingsError) as refused:
        refuse_changed_settings(checkpoint, current)
    message = str(refused.value)
    assert "\n" not in message
    assert "frequency_input_gradient: 0.0 (not saved: the checkpoint predates this setting) -> 1.0" in message
    assert "pass --set sae.frequency_input_gradient=0" in message
    assert "matryoshka_widths" not in message  # off then and now: not a change
    # With the old (θ-only) form asked for, it resumes.
    refuse_changed_settings(checkpoint, build(frequency_penalty=100.0, frequency_input_gradient=0.0))


def test_the_frequency_penalty_settings_count_only_while_it_is_on() -> None:
    saved = _single(frequency_input_gradient=0.5, frequency_cap=0.2)
    assert changed_settings(saved, _single()) == []  # off before and now: κ and c change nothing
    on_before = _single(frequency_penalty=10.0, frequency_input_gradient=0.5)
    assert changed_settings(on_before, _single(frequency_penalty=10.0)) == [
        "sae.frequency_input_gradient: 0.5 -> 1.0"
    ]
    turned_on = changed_settings(saved, _single(frequency_penalty=10.0))
    assert turned_on == [
        "sae.frequency_cap: 0.2 -> 0.1",
        "sae.frequency_input_gradient: 0.5 -> 1.0",
        "sae.frequency_penalty: 0.0 -> 10.0",
    ]


def test_a_checkpoint_from_before_the_gemma_scope_2_knobs_resumes_a_gemma_scope_run() -> None:
    current = _single()
    knobs = ("l0_penalty", "target_l0", "frequency_penalty", "frequency_cap", *ADDED_LAST)
    saved = _written_before(current, knobs)
    assert changed_settings(saved, current) == []
    quadratic = _single(l0_penalty="quadratic", target_l0=4.0)
    assert changed_settings(saved, quadratic) == [
        'sae.l0_penalty: "linear" (not saved: the checkpoint predates this setting) -> "quadratic"',
        "sae.target_l0: null (not saved: the checkpoint predates this setting) -> 4.0",
    ]
