from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from saelens_gemmascope.demo import bpe_tokenizer
from saelens_gemmascope.demo import embedded_model as pretrained_tiny
from saelens_gemmascope.demo.embedded_model import (
    EMBEDDED_MODEL_NAME,
    METRICS_FILENAME,
    EmbeddedModel,
    EmbeddedModelSettings,
    build_embedded_model,
    cache_key,
    embedded_model_dir,
    load_embedded_model,
)
from saelens_gemmascope.demo.tokenizer import BOS_ID
from saelens_gemmascope.models.gemma2 import gemma2_sites

#: HF and TransformerLens compute the same function in fp32 with differently ordered operations.
LOGIT_ATOL = 1e-4


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("called although the build is cached")


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_config_keeps_every_gemma2_feature(
    small_settings: EmbeddedModelSettings, small_model: EmbeddedModel
) -> None:
    config = small_model.hf_model.config
    assert config.layer_types == ["sliding_attention", "full_attention"]
    assert config.sliding_window == small_settings.sliding_window < small_settings.context_size
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    assert config.attn_logit_softcapping and config.final_logit_softcapping
    assert config.hidden_activation == "gelu_pytorch_tanh"
    assert config.query_pre_attn_scalar == config.head_dim
    assert config.tie_word_embeddings
    assert config._attn_implementation == "eager"
    # Pre- and post-norms around both sub-blocks, as in every Gemma 2.
    layer = small_model.hf_model.model.layers[0]
    for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm"):
        assert hasattr(layer, norm)
    assert hasattr(layer, "post_feedforward_layernorm")


def test_spec_uses_the_gemma2_site_layout(
    small_settings: EmbeddedModelSettings, small_model: EmbeddedModel
) -> None:
    spec = small_model.spec
    assert spec.name == EMBEDDED_MODEL_NAME
    assert spec.sites == gemma2_sites(small_settings.dims())
    assert spec.sites["att"].d_in == small_settings.n_heads * small_settings.d_head != small_settings.d_model
    assert (spec.d_model, spec.n_layers, spec.d_vocab) == (
        small_settings.d_model,
        small_settings.n_layers,
        small_settings.vocab_size,
    )


def test_cache_holds_model_tokenizer_and_metrics(
    small_settings: EmbeddedModelSettings, small_model: EmbeddedModel, small_cache: Path
) -> None:
    directory = small_model.directory
    assert directory == embedded_model_dir(0, small_settings, small_cache)
    assert directory.parent == small_cache / EMBEDDED_MODEL_NAME
    for name in ("config.json", "model.safetensors", "tokenizer.json", METRICS_FILENAME):
        assert (directory / name).is_file(), name
    metrics = json.loads((directory / METRICS_FILENAME).read_text())
    assert metrics == small_model.metrics
    assert metrics["settings"] == dataclasses.asdict(small_settings)
    assert metrics["seed"] == 0
    assert metrics["heldout_ce_nats"] > 0 and metrics["unigram_ce_nats"] > 0
    # No staging directories left behind.
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]


def test_second_load_reuses_the_cache(
    small_settings: EmbeddedModelSettings,
    small_model: EmbeddedModel,
    small_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pretrained_tiny, "train_language_model", _refuse)
    monkeypatch.setattr(bpe_tokenizer, "train_bpe_tokenizer", _refuse)
    mtime = (small_model.directory / "model.safetensors").stat().st_mtime_ns
    again = load_embedded_model(0, settings=small_settings, cache_dir=small_cache, progress=False)
    assert (again.directory / "model.safetensors").stat().st_mtime_ns == mtime
    _assert_same_weights(again.hf_model, small_model.hf_model)
    assert again.metrics == small_model.metrics


def test_rebuild_retrains(
    small_settings: EmbeddedModelSettings, small_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    load_embedded_model(0, settings=small_settings, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(pretrained_tiny, "train_language_model", _refuse)
    with pytest.raises(AssertionError, match="cached"):
        load_embedded_model(0, settings=small_settings, cache_dir=tmp_path, rebuild=True, progress=False)


def test_cached_load_never_opens_a_socket(
    small_settings: EmbeddedModelSettings,
    small_model: EmbeddedModel,
    small_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the load itself must not rely on it
    loaded = load_embedded_model(0, settings=small_settings, cache_dir=small_cache, progress=False)
    assert loaded.tl_model.tokenizer is loaded.tokenizer


def test_cache_key_follows_seed_settings_and_text(small_settings: EmbeddedModelSettings) -> None:
    base = cache_key(small_settings, 0, "train", "held out")
    assert base == cache_key(small_settings, 0, "train", "held out")
    assert base != cache_key(small_settings, 1, "train", "held out")
    assert base != cache_key(
        dataclasses.replace(small_settings, steps=small_settings.steps + 1), 0, "train", "held out"
    )
    assert base != cache_key(small_settings, 0, "train.", "held out")
    assert base != cache_key(small_settings, 0, "train", "held out.")


def test_build_is_deterministic_and_leaves_torch_state_alone(
    small_settings: EmbeddedModelSettings, small_model: EmbeddedModel
) -> None:
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    same, _, same_metrics = build_embedded_model(0, small_settings, progress=False)
    other, _, _ = build_embedded_model(1, small_settings, progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    # Bit-identical to the cached build of the same seed (saved and reloaded on the way).
    _assert_same_weights(same, small_model.hf_model)
    assert same_metrics["heldout_ce_nats"] == small_model.metrics["heldout_ce_nats"]
    for (name, a), (_, b) in zip(same.state_dict().items(), other.state_dict().items(), strict=True):
        if name.endswith("proj.weight"):
            assert not torch.equal(a, b), name


def test_hf_and_transformer_lens_logits_agree(
    small_settings: EmbeddedModelSettings, small_model: EmbeddedModel
) -> None:
    text = "The for statement is used to iterate over the elements of a sequence."
    tokens = small_model.tokenizer(text, return_tensors="pt").input_ids[:, : small_settings.context_size]
    assert tokens.shape[1] > small_settings.sliding_window  # so local and global layers differ
    with torch.no_grad():
        hf_logits = small_model.hf_model(tokens).logits
        tl_logits = small_model.tl_model(tokens)
    torch.testing.assert_close(tl_logits, hf_logits, atol=LOGIT_ATOL, rtol=0)


def test_tl_model_tokenizes_with_bos(small_model: EmbeddedModel) -> None:
    tokens = small_model.tl_model.to_tokens("def f(x): return x")
    assert tokens[0, 0].item() == BOS_ID
    assert small_model.tl_model.to_string(tokens[0, 1:]) == "def f(x): return x"


def test_unwritable_cache_names_the_way_out(small_settings: EmbeddedModelSettings, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="SAELENS_GEMMASCOPE_CACHE"):
        load_embedded_model(0, settings=small_settings, cache_dir=blocker, progress=False)
