"""One site vocabulary: the suite manifest, `gemmascope ls`, the presets, hook_point and attach_sae agree."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import saelens_gemmascope
from saelens_gemmascope.cli import build_parser
from saelens_gemmascope.demo.tiny_model import tiny_gemma2_spec
from saelens_gemmascope.directory.manifest import EMBEDDING, load_manifest
from saelens_gemmascope.host import load_plugins
from saelens_gemmascope.models import hook_point
from saelens_gemmascope.models.spec import DEPRECATED_SITES

#: The suite's own names: every release's site, and the embedding SAEs (held in the res releases).
SUITE_SITES = {release.site for release in load_manifest().releases.values()} | {EMBEDDING}
PACKAGE = Path(saelens_gemmascope.__file__).parent
# The repository's README (the package may be installed elsewhere, e.g. into tox's site-packages).
README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_suite_names_the_five_sites() -> None:
    assert {"res", "mlp", "att", "transcoder", "embedding"} == SUITE_SITES


def test_every_gemma_model_spec_uses_the_suite_names() -> None:
    specs = [*load_plugins().models.values(), tiny_gemma2_spec()]
    assert {"gemma-2-2b", "gemma-2-9b-it", "gemma-2-27b", "tiny-gemma-2"} <= {spec.name for spec in specs}
    for spec in specs:
        assert set(spec.sites) == SUITE_SITES, spec.name


def _ls_site_choices() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    ls = commands.choices["ls"]
    site = next(a for a in ls._actions if a.dest == "site")
    return set(site.choices or ())


def test_gemmascope_ls_offers_the_suite_names() -> None:
    assert _ls_site_choices() == SUITE_SITES


def test_presets_use_the_suite_names() -> None:
    assert {preset.site for preset in load_plugins().presets.values()} == SUITE_SITES


@pytest.mark.parametrize("site", sorted(SUITE_SITES))
def test_hook_point_answers_every_suite_name(site: str) -> None:
    layer = None if site == EMBEDDING else 3
    point = hook_point("gemma-2-2b", site, layer)
    assert (point.site, point.layer) == (site, layer)
    # Only a transcoder writes somewhere else than it reads: over the MLP output.
    if site == "transcoder":
        assert point.output == hook_point("gemma-2-2b", "mlp", 3)
    else:
        assert point.output is None


def test_the_old_names_appear_only_in_the_deprecation_table() -> None:
    """transcoder_in / transcoder_out are accepted with a warning, and used nowhere else."""
    # spec.py holds the table; lookup.hook_point's docstring tells users the old names still work.
    allowed = {PACKAGE / "models" / "spec.py", PACKAGE / "models" / "lookup.py"}
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.yaml"), README]:
        if path in allowed:
            continue
        text = path.read_text(encoding="utf-8")
        for old in DEPRECATED_SITES:
            assert old not in text, f"{path} still says {old!r}"
