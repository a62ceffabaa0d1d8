from __future__ import annotations

import pytest

from saelens_gemmascope.demo.tiny_model import tiny_gemma2_spec
from saelens_gemmascope.models.gemma2 import gemma2_model_specs
from saelens_gemmascope.models.lookup import find_hook_point, find_model_spec
from saelens_gemmascope.models.spec import UnknownNameError

SPECS = {spec.name: spec for spec in [*gemma2_model_specs(), tiny_gemma2_spec()]}


@pytest.mark.parametrize(
    ("model", "att_width", "d_model", "n_layers"),
    [("gemma-2-2b", 2048, 2304, 26), ("gemma-2-9b", 4096, 3584, 42), ("gemma-2-27b", 4096, 4608, 46)],
)
def test_widths_and_layer_bounds(model: str, att_width: int, d_model: int, n_layers: int) -> None:
    for name in (model, f"{model}-it"):
        assert find_hook_point(SPECS, name, "att", 0).d_in == att_width
        for site in ("res", "mlp", "transcoder"):
            assert find_hook_point(SPECS, name, site, n_layers - 1).d_in == d_model
        assert find_hook_point(SPECS, name, "embedding").d_in == d_model
        with pytest.raises(ValueError, match=rf"0\.\.{n_layers - 1}, got {n_layers}"):
            find_hook_point(SPECS, name, "res", n_layers)
        with pytest.raises(ValueError, match="needs a layer"):
            find_hook_point(SPECS, name, "mlp", -1)


def test_resolved_names() -> None:
    hp = find_hook_point(SPECS, "gemma-2-2b", "att", 12)
    assert (hp.model, hp.site, hp.layer) == ("gemma-2-2b", "att", 12)
    assert hp.tl_hook == "blocks.12.attn.hook_z"
    assert hp.bridge_hook == "blocks.12.attn.o.hook_in"
    assert (hp.hf_module, hp.hf_tensor) == ("model.layers.12.self_attn.o_proj", "input")
    mlp = find_hook_point(SPECS, "gemma-2-9b", "mlp", 20)
    assert (mlp.tl_hook, mlp.hf_module) == (
        "blocks.20.hook_mlp_out",
        "model.layers.20.post_feedforward_layernorm",
    )
    tc = find_hook_point(SPECS, "gemma-2-2b", "transcoder", 3)
    assert (tc.tl_hook, tc.hf_transform) == ("blocks.3.ln2.hook_normalized", "rms_normalize")
    assert tc.output == find_hook_point(SPECS, "gemma-2-2b", "mlp", 3)  # where a transcoder writes
    assert tc.output.tl_hook == "blocks.3.hook_mlp_out"
    assert find_hook_point(SPECS, "gemma-2-2b", "mlp", 3).output is None
    emb = find_hook_point(SPECS, "gemma-2-2b", "embedding")
    assert (emb.layer, emb.tl_hook, emb.hf_module) == (None, "hook_embed", "model.embed_tokens")


#: The published Gemma 2 configurations (each model's config.json on the Hugging Face hub), written
#: out here rather than read from GEMMA2_DIMS: the specs are built from that table, so comparing the
#: two could not fail.
PUBLISHED = {
    # name: (d_model, n_layers, n_heads, n_kv_heads, d_head, d_mlp)
    "gemma-2-2b": (2304, 26, 8, 4, 256, 9216),
    "gemma-2-9b": (3584, 42, 16, 8, 256, 14336),
    "gemma-2-27b": (4608, 46, 32, 16, 128, 36864),
}


@pytest.mark.parametrize("base", sorted(PUBLISHED))
def test_registered_specs_have_the_published_dimensions(base: str) -> None:
    from saelens_gemmascope.models import model_spec

    for name in (base, f"{base}-it"):
        spec = model_spec(name)  # through the plugins, as users get it
        dims = (spec.d_model, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_head, spec.d_mlp)
        assert dims == PUBLISHED[base], name
        assert (spec.d_vocab, spec.hf_repo) == (256_000, f"google/{name}")


def test_aliases() -> None:
    assert find_model_spec(SPECS, "google/gemma-2-2b").name == "gemma-2-2b"
    assert find_model_spec(SPECS, "google/gemma-2-9b-it").name == "gemma-2-9b-it"
    assert find_hook_point(SPECS, "google/gemma-2-27b", "res", 22).tl_hook == "blocks.22.hook_resid_post"


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'gemma-2-2b'") as err:
        find_model_spec(SPECS, "gemma-2-2")
    assert "Known models:" in str(err.value)
    assert not str(err.value).startswith('"')  # a readable message, not a quoted KeyError
    with pytest.raises(KeyError, match="Unknown model 'llama'"):
        find_model_spec(SPECS, "llama")


def test_unknown_site_suggests_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'att'") as err:
        find_hook_point(SPECS, "gemma-2-2b", "attn", 3)
    assert "Known sites: att, embedding, mlp, res, transcoder" in str(err.value)


def test_embedding_takes_no_layer() -> None:
    with pytest.raises(ValueError, match="has no layers"):
        find_hook_point(SPECS, "gemma-2-2b", "embedding", 0)


def test_public_hook_point_uses_the_registered_plugins() -> None:
    from saelens_gemmascope.models import hook_point, model_spec

    assert hook_point("google/gemma-2-2b", "att", 5).d_in == 2048
    assert hook_point("tiny-gemma-2", "res", 3).d_in == 64
    assert model_spec("gemma-2-27b-it").n_layers == 46
    with pytest.raises(KeyError, match="Did you mean"):
        hook_point("gemma-2-2bb", "res", 0)


def test_old_transcoder_site_names_still_work_with_a_deprecation_warning() -> None:
    tc = find_hook_point(SPECS, "gemma-2-2b", "transcoder", 3)
    with pytest.warns(FutureWarning, match=r"use hook_point\(\.\.\., 'transcoder', layer\)$"):
        assert find_hook_point(SPECS, "gemma-2-2b", "transcoder_in", 3) == tc
    with pytest.warns(FutureWarning, match=r"'transcoder', layer\)\.output"):
        assert find_hook_point(SPECS, "gemma-2-2b", "transcoder_out", 3) == tc.output
