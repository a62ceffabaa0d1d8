"""Gemma Scope 2 through this package's converter, on fake Hugging Face caches and mirrors (offline,
tiny shapes): equal to SAELens's own gemma_3 converter and to the paper's equations, strict file
checks, the mirror / HF cache / conversion cache order, and the CLI."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from gemmascope_fakes import (
    SCOPE2_CASES,
    SCOPE2_REPO,
    TINY_SCOPE2_D_HEAD,
    TINY_SCOPE2_D_MODEL,
    TINY_SCOPE2_HEADS,
    TINY_SCOPE2_WIDTHS,
    save_safetensors,
    scope2_config_json,
    scope2_params,
    tiny_gemma3_models,
    tiny_scope2_manifest,
)
from sae_lens import SAE
from sae_lens.loading import pretrained_sae_loaders as saelens_loaders
from sae_lens.loading.pretrained_sae_loaders import gemma_3_sae_huggingface_loader, handle_config_defaulting
from safetensors import safe_open

from saelens_gemmascope.directory.errors import SaeFileUnavailableError, UnknownRepoError
from saelens_gemmascope.directory.npz import ParamsFileError
from saelens_gemmascope.directory.scope2_converter import GemmaScope2Converter, UnknownFolderError

# Deliberate config differences from SAELens's gemma_3 converter (module docstring of scope2_converter):
# transcoders read the pre-MLP norm's output (mlp.hook_in), not the residual stream (hook_mlp_in).
CONFIG_DIFFERENCES = {
    "transcoder": {"hook_name": ("blocks.13.hook_mlp_in", "blocks.13.mlp.hook_in")},
    "affine transcoder": {"hook_name": ("blocks.13.hook_mlp_in", "blocks.13.mlp.hook_in")},
}


@pytest.fixture
def scope2_converter() -> GemmaScope2Converter:
    return GemmaScope2Converter(tiny_scope2_manifest(), tiny_gemma3_models())


def _record(kind: str):
    release, sae_id = SCOPE2_CASES[kind]
    return tiny_scope2_manifest().releases[release].saes[sae_id]


def _dims(kind: str) -> tuple[int, int, int]:
    sae = _record(kind)
    d_in = TINY_SCOPE2_HEADS * TINY_SCOPE2_D_HEAD if sae.site == "att" else TINY_SCOPE2_D_MODEL
    return d_in, TINY_SCOPE2_WIDTHS[sae.width], d_in


def _put(scope2_hf_cache, kind: str, seed: int = 0, with_config: bool = True) -> dict[str, np.ndarray]:
    sae = _record(kind)
    d_in, d_sae, d_out = _dims(kind)
    arrays = scope2_params(d_in, d_sae, d_out, sae.affine, seed=seed)
    scope2_hf_cache(SCOPE2_REPO, sae.folder, "params.safetensors", arrays)
    if with_config:
        scope2_hf_cache(SCOPE2_REPO, sae.folder, "config.json", scope2_config_json(sae.folder, sae.layer))
    return arrays


@pytest.fixture
def offline_shapes(monkeypatch):
    """SAELens's gemma_3 config getter asks the hub for the tensor shapes (an HTTP range request):
    answer from the Hugging Face cache instead, so that it runs offline on the same files."""
    from huggingface_hub import try_to_load_from_cache

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        path = try_to_load_from_cache(repo_id, filename)
        assert isinstance(path, str), filename
        with safe_open(path, framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118

    monkeypatch.setattr(saelens_loaders, "get_safetensors_tensor_shapes", shapes)


def reference(arrays: dict[str, np.ndarray], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's equations on the release's own arrays: f = JumpReLU_θ(x W_enc + b_enc),
    x̂ = f W_dec + b_dec (+ x A for an affine skip connection A [d_in, d_out])."""
    t = {key: torch.from_numpy(value).double() for key, value in arrays.items()}
    pre = x @ t["w_enc"] + t["b_enc"]
    f = pre * (pre > t["threshold"])
    out = f @ t["w_dec"] + t["b_dec"]
    if "affine_skip_connection" in t:
        out = out + x @ t["affine_skip_connection"]
    return f, out


@pytest.mark.parametrize("kind", sorted(SCOPE2_CASES))
def test_equals_saelens_gemma_3_converter_and_the_paper(
    kind, scope2_hf_cache, scope2_converter, offline_shapes
):
    arrays = _put(scope2_hf_cache, kind, seed=len(kind))
    folder = _record(kind).folder

    theirs_cfg, theirs, _ = gemma_3_sae_huggingface_loader(SCOPE2_REPO, folder, "cpu")
    ours_cfg, ours, sparsity = scope2_converter.load(SCOPE2_REPO, folder, "cpu")

    assert sparsity is None
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    differing = {
        k: (theirs_cfg.get(k), ours_cfg.get(k))
        for k in theirs_cfg.keys() | ours_cfg.keys()
        if theirs_cfg.get(k) != ours_cfg.get(k)
    }
    assert differing == CONFIG_DIFFERENCES.get(kind, {})

    sae = SAE.from_dict(handle_config_defaulting(ours_cfg))
    sae.load_state_dict(ours)
    x = torch.randn(5, sae.cfg.d_in, generator=torch.Generator().manual_seed(1))
    f_ref, out_ref = reference(arrays, x.double())
    with torch.no_grad():
        f = sae.encode(x)
        out = sae.decode(f) if "transcoder" not in kind else sae.forward(x)
    torch.testing.assert_close(f.double(), f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), out_ref, rtol=1e-5, atol=1e-4)
    assert sae.cfg.architecture() == (
        "jumprelu_skip_transcoder" if kind == "affine transcoder" else
        "jumprelu_transcoder" if kind == "transcoder" else "jumprelu"
    )  # fmt: skip


def test_affine_skip_orientation_is_x_times_the_stored_matrix(scope2_hf_cache, scope2_converter):
    """W_skip = affine_skip_connection.T: with zero decoder, the output is exactly x @ A + b_dec."""
    sae_record = _record("affine transcoder")
    d_in, d_sae, d_out = _dims("affine transcoder")
    arrays = scope2_params(d_in, d_sae, d_out, affine=True)
    arrays["w_dec"][:] = 0
    arrays["affine_skip_connection"] = np.arange(d_in * d_out, dtype=np.float32).reshape(d_in, d_out)
    scope2_hf_cache(SCOPE2_REPO, sae_record.folder, "params.safetensors", arrays)
    cfg, state, _ = scope2_converter.load(SCOPE2_REPO, sae_record.folder)
    sae = SAE.from_dict(cfg)
    sae.load_state_dict(state)
    x = torch.randn(3, d_in)
    with torch.no_grad():
        out = sae(x)
    torch.testing.assert_close(
        out, x @ torch.from_numpy(arrays["affine_skip_connection"]) + torch.from_numpy(arrays["b_dec"])
    )


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        (
            "transcoder",
            lambda a: a.update(affine_skip_connection=np.zeros((8, 8), np.float32)),
            "non-affine folder",
        ),
        ("affine transcoder", lambda a: a.pop("affine_skip_connection"), "missing key"),
        ("res", lambda a: a.update(w_enc=np.zeros((8, 13), np.float32)), "has shape"),
        ("res", lambda a: a["b_enc"].__setitem__(0, np.nan), "non-finite"),
        ("mlp", lambda a: a["threshold"].__setitem__(0, -1.0), "negative"),
        ("att", lambda a: a.update(W_enc=a.pop("w_enc")), "missing key"),
        ("res", lambda a: a.update(b_dec=a["b_dec"].astype(np.int32)), "dtype"),
    ],
)
def test_bad_files_are_refused_with_the_file_and_key(
    kind, change, message, scope2_hf_cache, scope2_converter
):
    sae = _record(kind)
    d_in, d_sae, d_out = _dims(kind)
    arrays = scope2_params(d_in, d_sae, d_out, sae.affine)
    change(arrays)
    path = scope2_hf_cache(SCOPE2_REPO, sae.folder, "params.safetensors", arrays)
    with pytest.raises(ParamsFileError, match=message) as err:
        scope2_converter.load(SCOPE2_REPO, sae.folder)
    assert str(path) in str(err.value)
    assert not scope2_converter.cache_path(SCOPE2_REPO, sae.folder).exists()  # nothing cached


def test_a_config_json_that_disagrees_is_refused(scope2_hf_cache, scope2_converter):
    sae = _record("affine transcoder")
    _put(scope2_hf_cache, "affine transcoder")
    wrong = {**scope2_config_json(sae.folder, sae.layer), "affine_connection": False}
    scope2_hf_cache(SCOPE2_REPO, sae.folder, "config.json", wrong)
    with pytest.raises(ParamsFileError, match="affine_connection"):
        scope2_converter.load(SCOPE2_REPO, sae.folder)


def test_unknown_repo_and_folder_get_close_matches(scope2_converter):
    with pytest.raises(UnknownRepoError, match="gemma-scope-2-1b-pt"):
        scope2_converter.target("google/gemma-scope-2-1b-px", "resid_post/layer_13_width_16k_l0_small")
    with pytest.raises(UnknownFolderError, match="layer_13_width_16k_l0_small"):
        scope2_converter.target(SCOPE2_REPO, "resid_post/layer_13_width_16k_l0_smal")


def test_no_local_copy_offline_names_the_safetensors_file(scope2_converter):
    folder = _record("res").folder
    with pytest.raises(SaeFileUnavailableError, match=r"params\.safetensors") as err:
        scope2_converter.load(SCOPE2_REPO, folder)
    assert "HF_HUB_OFFLINE" in str(err.value) and "SAELENS_GEMMASCOPE_MIRROR" in str(err.value)


def test_mirror_first_then_conversion_cache(scope2_hf_cache, scope2_converter, tmp_path):
    sae = _record("res")
    d_in, d_sae, d_out = _dims("res")
    _put(scope2_hf_cache, "res", seed=1)
    mirrored = scope2_params(d_in, d_sae, d_out, False, seed=2)
    save_safetensors(tmp_path / "mirror" / SCOPE2_REPO / sae.folder / "params.safetensors", mirrored)

    target = scope2_converter.target(SCOPE2_REPO, sae.folder)
    first = scope2_converter.read_params(target, mirror=tmp_path / "mirror")
    again = scope2_converter.read_params(target, mirror=tmp_path / "mirror")
    from_cache = scope2_converter.read_params(target)  # no mirror: the HF cache copy, not the mirror's

    assert (first.origin, again.origin, from_cache.origin) == ("mirror", "conversion-cache", "hf-cache")
    assert torch.equal(first.state_dict["W_enc"], torch.from_numpy(mirrored["w_enc"]))
    assert torch.equal(again.state_dict["W_enc"], first.state_dict["W_enc"])
    assert not torch.equal(from_cache.state_dict["W_enc"], first.state_dict["W_enc"])


def test_sae_from_pretrained_on_a_mirror(tmp_path, scope2_converter):
    """SAELens's own entry point, the release's real name and id, files from a mirror folder."""
    release, sae_id = SCOPE2_CASES["affine transcoder"]
    sae_record = _record("affine transcoder")
    d_in, d_sae, d_out = _dims("affine transcoder")
    arrays = scope2_params(d_in, d_sae, d_out, True, seed=3)
    save_safetensors(tmp_path / "m" / SCOPE2_REPO / sae_record.folder / "params.safetensors", arrays)
    sae = SAE.from_pretrained(
        release, sae_id, converter=partial(scope2_converter.load, mirror=tmp_path / "m")
    )
    assert sae.cfg.architecture() == "jumprelu_skip_transcoder"
    assert torch.equal(sae.W_skip.detach(), torch.from_numpy(arrays["affine_skip_connection"]).T)


def _run_cli(*argv: str) -> int:
    from saelens_gemmascope.cli import main

    return main(list(argv))


def test_cli_ls_by_model_with_or_without_google(capsys):
    assert _run_cli("ls", "--model", "gemma-3-1b-pt", "--site", "res", "--layer", "13") == 0
    out = capsys.readouterr().out
    assert "gemma-scope-2-1b-pt-res " in out and "gemma-scope-2-1b-pt-res-all" in out
    assert "medium+seed1=60" in out and "gemma-scope-2-1b-it" not in out
    assert "not served: Gemma Scope 2 clt" in out
    assert _run_cli("ls", "--model", "google/gemma-3-1b-pt", "--site", "res", "--layer", "13") == 0
    assert capsys.readouterr().out == out


def test_cli_info_and_fetch_from_a_mirror(tmp_path, capsys, monkeypatch):
    """The real release and id, resolved against the registered Gemma 3 spec (real d_in 640 for 270m)."""
    from saelens_gemmascope.directory.scope2_manifest import load_scope2_manifest

    sae = load_scope2_manifest().releases["gemma-scope-2-270m-pt-res"].saes["layer_12_width_16k_l0_medium"]
    assert _run_cli("info", sae.release, sae.sae_id) == 0
    out = capsys.readouterr().out
    for expected in (
        "blocks.12.hook_resid_post",
        "d_in:            640",
        "16384",
        "60 (medium)",
        "gemma-3-270m/12-gemmascope-2-res-16k",
        "model.layers.12.output",
        "unavailable: offline mode",
    ):
        assert expected in out, expected
    monkeypatch.setenv("SAELENS_GEMMASCOPE_MIRROR", str(tmp_path / "m"))
    path = tmp_path / "m" / sae.repo_id / sae.folder / "params.safetensors"
    arrays = scope2_params(640, 16384, 640, False)
    save_safetensors(path, arrays)
    (path.parent / "config.json").write_text(json.dumps(scope2_config_json(sae.folder, 12)))
    assert _run_cli("info", sae.release, sae.sae_id) == 0
    assert f"mirror {path}" in capsys.readouterr().out
    assert _run_cli("fetch", sae.release, sae.sae_id) == 0
    assert "source:    mirror" in capsys.readouterr().out
    assert _run_cli("info", sae.release, sae.sae_id) == 0
    assert "conversion cache" in capsys.readouterr().out


def test_cli_names_crosscoders_and_clts_as_not_served(capsys):
    assert _run_cli("info", "gemma-scope-2-1b-pt-clt", "layer_5") == 2
    err = capsys.readouterr().err
    assert "CLT" in err and "not served" in err
