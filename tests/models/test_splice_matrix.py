"""attach_sae splices every kind of SAE the package loads or trains, into every backend, from every source.

Kinds: res, mlp, att (in SAELens's hook_z mode and not), embedding, transcoder, skip transcoder.
Backends: HookedSAETransformer, SAETransformerBridge, Hugging Face. Sources: built in memory, a
SAELens save folder (``SAE.load_from_disk``), a local release and the released suite (both through
``SAE.from_pretrained``, offline: the suite's real release names and folders, served from a mirror
by the package's converter with the tiny model's sizes).

The expected logits come from a reference written out by hand (the JumpReLU formula applied in plain
TransformerLens hooks), not from SAELens or attach_sae, using the original weights: a source that
changed a weight or a setting fails the comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.transcoder import (
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
)

from saelens_gemmascope.demo.tiny_model import TINY_GEMMA2_DIMS, TINY_GEMMA2_NAME, tiny_gemma2_spec
from saelens_gemmascope.directory.converter import GemmaScopeConverter
from saelens_gemmascope.directory.layout import RELEASE_FILE, export_gemmascope_sae
from saelens_gemmascope.directory.local import register_local_release
from saelens_gemmascope.directory.manifest import parse_manifest
from saelens_gemmascope.directory.npz import PARAM_KEYS
from saelens_gemmascope.models.attach import attach_sae
from saelens_gemmascope.models.gemma2 import gemma2_spec
from saelens_gemmascope.models.spec import HookPoint

#: The same fp32 model in three implementations (as tests/models/test_attach.py).
CROSS_ATOL = 1e-4
#: use_error_term=True: the output is the clean one up to float rounding (x̂ + (x - x̂) != x exactly;
#: 1e-5 in tests/models/test_attach.py, here also on the embedding, whose values are √d_model = 8x larger).
ERROR_TERM_ATOL = 1e-4
#: A splice that did anything moves some logit by more than this.
VISIBLE_CHANGE = 0.1

pytestmark = pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")

SPEC = tiny_gemma2_spec()
LAYER = 2
BACKENDS = ["hooked", "bridge", "hf"]


@dataclass(frozen=True)
class Kind:
    """One kind of SAE: where it goes and how it is built."""

    name: str
    site: str
    layer: int | None
    reshape: str = "none"  # cfg.reshape_activations of a plain SAE
    transcoder: bool = False
    skip: bool = False

    @property
    def hook_point(self) -> HookPoint:
        return SPEC.hook_point(self.site, self.layer)


KINDS = {
    kind.name: kind
    for kind in [
        Kind("res", "res", LAYER),
        Kind("mlp", "mlp", LAYER),
        Kind("att-hook_z", "att", LAYER, reshape="hook_z"),
        Kind("att-flat", "att", LAYER, reshape="none"),
        Kind("embedding", "embedding", None),
        Kind("transcoder", "transcoder", LAYER, transcoder=True),
        Kind("skip-transcoder", "transcoder", LAYER, transcoder=True, skip=True),
    ]
}
PLAIN_KINDS = [name for name, kind in KINDS.items() if not kind.transcoder]


def _random(shape: tuple[int, ...], scale: float, generator: torch.Generator) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=generator)


def build_sae(kind: Kind, seed: int = 0) -> SAE[Any]:
    """Random weights, threshold 0 (JumpReLU = ReLU: no latent can flip between implementations);
    hook names unset, as attach_sae must fill them in."""
    hp = kind.hook_point
    d_in, d_sae = hp.d_in, 2 * hp.d_in
    if kind.transcoder:
        cls, cfg_cls = (
            (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig)
            if kind.skip
            else (JumpReLUTranscoder, JumpReLUTranscoderConfig)
        )
        sae: SAE[Any] = cls(cfg_cls(d_in=d_in, d_sae=d_sae, d_out=hp.output.d_in, apply_b_dec_to_input=False))  # type: ignore[union-attr]
    else:
        sae = JumpReLUSAE(
            JumpReLUSAEConfig(
                d_in=d_in,
                d_sae=d_sae,
                apply_b_dec_to_input=False,
                reshape_activations=kind.reshape,  # type: ignore[arg-type]
                metadata=SAEMetadata(hook_name=None),
            )
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(_random((d_in, d_sae), d_in**-0.5, generator))
        sae.W_dec.copy_(_random((d_sae, sae.W_dec.shape[1]), d_sae**-0.5, generator))
        sae.b_enc.copy_(_random((d_sae,), 0.1, generator))
        sae.b_dec.copy_(_random((sae.W_dec.shape[1],), 0.1, generator))
        if kind.skip:
            sae.W_skip.copy_(_random(tuple(sae.W_skip.shape), d_in**-0.5, generator))
    return sae.eval()


def reference_output(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The JumpReLU SAE / (skip) transcoder formula: W_dec·JumpReLU(W_enc·x + b_enc) + b_dec (+ W_skip·x)."""
    pre = x @ params["W_enc"] + params["b_enc"]
    acts = torch.relu(pre) * (pre > params["threshold"])
    out = acts @ params["W_dec"] + params["b_dec"]
    if "W_skip" in params:
        out = out + x @ params["W_skip"].T
    return out


def reference_logits(
    tl_model: Any, kind: Kind, params: dict[str, torch.Tensor], tokens: torch.Tensor
) -> torch.Tensor:
    """Logits with the formula spliced in through plain TransformerLens hooks."""
    hp = kind.hook_point
    read: dict[str, torch.Tensor] = {}

    def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if kind.site == "att":  # hook_z: (batch, pos, head, d_head); the SAE reads the heads flattened
            return reference_output(params, act.flatten(-2)).unflatten(-1, act.shape[-2:])
        return reference_output(params, act)

    hooks: list[tuple[str, Callable[..., Any]]] = [(hp.tl_hook, replace)]
    if kind.transcoder:
        assert hp.output is not None

        def capture(act: torch.Tensor, hook: Any) -> None:
            read["x"] = act

        def replace_mlp_out(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return reference_output(params, read["x"])

        hooks = [(hp.tl_hook, capture), (hp.output.tl_hook, replace_mlp_out)]
    with torch.no_grad():
        return tl_model.run_with_hooks(tokens, fwd_hooks=hooks)


def params_of(sae: SAE[Any]) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in sae.state_dict().items()}


# -- sources --------------------------------------------------------------------------------------


def from_memory(sae: SAE[Any], kind: Kind, tmp_path: Path) -> SAE[Any]:
    return sae


def from_save_folder(sae: SAE[Any], kind: Kind, tmp_path: Path) -> SAE[Any]:
    folder = tmp_path / "saved"
    sae.save_model(folder)
    return SAE.load_from_disk(folder, device="cpu").eval()


def export_release(sae: SAE[Any], kind: Kind, root: Path) -> str:
    """Export ``sae`` at ``kind``'s site in the Gemma Scope layout under ``root``; its SAE id."""
    exported = export_gemmascope_sae(
        sae, root, average_l0=10.0, hook_name=kind.hook_point.tl_hook, model_name=TINY_GEMMA2_NAME
    )
    return exported.sae_id


def from_local_release(sae: SAE[Any], kind: Kind, tmp_path: Path) -> SAE[Any]:
    root = tmp_path / "release"
    sae_id = export_release(sae, kind, root)
    name = register_local_release(root, persist=False)
    return SAE.from_pretrained(name, sae_id, device="cpu").eval()


#: Real folders of the suite at layer 2, width 16k, for the kinds it releases (its embedding SAEs
#: are rescaled on loading, so their weights differ from the file's: tests/directory covers them).
RELEASED = {
    "res": ("gemma-scope-2b-pt-res", "layer_2/width_16k/average_l0_53"),
    "mlp": ("gemma-scope-2b-pt-mlp", "layer_2/width_16k/average_l0_95"),
    "att-hook_z": ("gemma-scope-2b-pt-att", "layer_2/width_16k/average_l0_93"),
    "transcoder": ("gemma-scope-2b-pt-transcoders", "layer_2/width_16k/average_l0_49"),
}


def from_released_suite(sae: SAE[Any], kind: Kind, tmp_path: Path) -> SAE[Any]:
    """``SAE.from_pretrained(<real release>, <real folder>)`` with ``sae``'s weights in the mirror."""
    release, folder = RELEASED[kind.name]
    l0 = int(folder.rsplit("_", 1)[1])
    manifest = parse_manifest(
        {
            "format": 1,
            "canonical_target_l0": 100,
            "widths": {"16k": sae.cfg.d_sae},
            "training_tokens": {"default": 8},
            "releases": {
                release: {
                    "repo_id": f"google/{release}",
                    "model": "gemma-2-2b",
                    "site": kind.site,
                    "canonical_release": None,
                    "widths": {"16k": {"l0s": {LAYER: [l0]}}},
                }
            },
        }
    )
    models = {"gemma-2-2b": gemma2_spec("gemma-2-2b", TINY_GEMMA2_DIMS, hf_repo="google/gemma-2-2b")}
    converter = GemmaScopeConverter(manifest, models, cache_dir=tmp_path / "converted")
    mirror = tmp_path / "mirror"
    params = mirror / f"google/{release}" / folder / "params.npz"
    params.parent.mkdir(parents=True)
    np.savez(
        params,
        **{key: value.detach().numpy() for key, value in sae.state_dict().items() if key in PARAM_KEYS},
    )
    load = partial(converter.load, mirror=mirror)
    return SAE.from_pretrained(release, folder, device="cpu", converter=load).eval()


SOURCES: dict[str, Callable[[SAE[Any], Kind, Path], SAE[Any]]] = {
    "memory": from_memory,
    "save_folder": from_save_folder,
    "local_release": from_local_release,
    "released_suite": from_released_suite,
}


def _available(kind: str, source: str) -> bool:
    if source == "local_release":  # the Gemma Scope layout holds plain JumpReLU SAEs
        return not KINDS[kind].transcoder
    if source == "released_suite":
        return kind in RELEASED
    return True


CASES = [(kind, source) for kind in KINDS for source in SOURCES if _available(kind, source)]


# -- the matrix -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny, tiny_bridge):
    return {"hooked": tiny.tl_model, "bridge": tiny_bridge, "hf": tiny.hf_model}


def logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


@pytest.fixture(scope="module")
def clean(models, tokens):
    return {backend: logits(model, tokens) for backend, model in models.items()}


@pytest.mark.parametrize(("kind_name", "source"), CASES)
def test_every_kind_splices_into_every_backend(models, clean, tokens, tmp_path, kind_name, source) -> None:
    kind = KINDS[kind_name]
    original = build_sae(kind)
    params = params_of(original)
    sae = SOURCES[source](original, kind, tmp_path)
    expected = reference_logits(models["hooked"], kind, params, tokens)
    assert (expected - clean["hooked"]).abs().max() > VISIBLE_CHANGE
    for backend in BACKENDS:
        model = models[backend]
        with attach_sae(model, sae, kind.site, kind.layer):
            spliced = logits(model, tokens)
        torch.testing.assert_close(
            spliced, expected, atol=CROSS_ATOL, rtol=0, msg=lambda m, b=backend: f"{b}: {m}"
        )
        with attach_sae(model, sae, kind.site, kind.layer, use_error_term=True):
            restored = logits(model, tokens)
        torch.testing.assert_close(
            restored, clean[backend], atol=ERROR_TERM_ATOL, rtol=0, msg=lambda m, b=backend: f"{b}: {m}"
        )
        # Detached: the model is clean again, bit for bit.
        torch.testing.assert_close(
            logits(model, tokens), clean[backend], atol=0, rtol=0, msg=lambda m, b=backend: f"{b}: {m}"
        )


def test_the_skip_term_is_part_of_the_splice(models, tokens) -> None:
    """SAELens's own add_sae wrapper leaves a skip transcoder's W_skip·x out; attach_sae must not."""
    kind = KINDS["skip-transcoder"]
    sae = build_sae(kind)
    without_skip = {k: v for k, v in params_of(sae).items() if k != "W_skip"}
    no_skip_logits = reference_logits(models["hooked"], kind, without_skip, tokens)
    for backend in BACKENDS:
        with attach_sae(models[backend], sae, "transcoder", LAYER):
            spliced = logits(models[backend], tokens)
        assert (spliced - no_skip_logits).abs().max() > VISIBLE_CHANGE, backend


def test_transcoder_hooks_are_claimed_and_saelens_sees_it(models, tokens) -> None:
    sae = build_sae(KINDS["transcoder"])
    model = models["hooked"]
    hp = SPEC.hook_point("transcoder", LAYER)
    with attach_sae(model, sae, "transcoder", LAYER):
        assert (sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out) == (
            f"blocks.{LAYER}.ln2.hook_normalized",
            f"blocks.{LAYER}.hook_mlp_out",
        )
        assert model.acts_to_saes == {hp.tl_hook: sae}
        _, cache = model.run_with_cache(tokens)
        assert f"blocks.{LAYER}.hook_mlp_out.hook_sae_acts_post" in cache
    assert model.acts_to_saes == {}


def test_a_transcoder_goes_at_the_transcoder_site_only(models) -> None:
    sae = build_sae(KINDS["transcoder"])
    with pytest.raises(ValueError, match="attach it at site 'transcoder', not 'mlp'"):
        attach_sae(models["hf"], sae, "mlp", LAYER)


def test_a_transcoder_writing_elsewhere_is_refused(models) -> None:
    sae = build_sae(KINDS["transcoder"])
    sae.cfg.metadata.hook_name_out = f"blocks.{LAYER}.hook_resid_post"
    with pytest.raises(ValueError, match=r"hook_name_out.*hook_mlp_out"):
        attach_sae(models["hooked"], sae, "transcoder", LAYER)


# -- attention exports: the setting that lets plain SAELens splice them ---------------------------


def test_exported_att_sae_loads_in_hook_z_mode_and_saelens_add_sae_splices_it(
    models, tokens, tmp_path
) -> None:
    """The issue's case: an att SAE from a local release, attached with SAELens's own add_sae."""
    kind = KINDS["att-flat"]  # trained SAEs are saved with reshape_activations='none'
    original = build_sae(kind)
    expected = reference_logits(models["hooked"], kind, params_of(original), tokens)
    sae = from_local_release(original, kind, tmp_path)
    assert sae.cfg.reshape_activations == "hook_z"
    model = models["hooked"]
    model.add_sae(sae)
    try:
        torch.testing.assert_close(logits(model, tokens), expected, atol=CROSS_ATOL, rtol=0)
    finally:
        model.reset_saes()


def test_an_older_att_export_recorded_as_none_is_read_as_hook_z(tmp_path) -> None:
    import json

    kind = KINDS["att-flat"]
    root = tmp_path / "old-release"
    sae_id = export_release(build_sae(kind), kind, root)
    manifest_path = root / RELEASE_FILE
    manifest = json.loads(manifest_path.read_text())
    assert [entry["reshape_activations"] for entry in manifest["saes"]] == ["hook_z"]
    for entry in manifest["saes"]:
        entry["reshape_activations"] = "none"  # what exports before this fix wrote
    manifest_path.write_text(json.dumps(manifest))
    sae = SAE.from_pretrained(register_local_release(root, persist=False), sae_id, device="cpu")
    assert sae.cfg.reshape_activations == "hook_z"


def test_non_attention_exports_keep_no_reshaping(tmp_path) -> None:
    kind = KINDS["res"]
    sae = from_local_release(build_sae(kind), kind, tmp_path)
    assert sae.cfg.reshape_activations == "none"


def test_the_old_site_name_still_attaches_a_transcoder_with_a_warning(models, tokens) -> None:
    kind = KINDS["transcoder"]
    sae = build_sae(kind)
    expected = reference_logits(models["hooked"], kind, params_of(sae), tokens)
    with pytest.warns(FutureWarning, match="'transcoder_in' is deprecated"):
        handle = attach_sae(models["hf"], sae, "transcoder_in", LAYER)
    with handle:
        torch.testing.assert_close(logits(models["hf"], tokens), expected, atol=CROSS_ATOL, rtol=0)
