"""The point of training: held-out text is predicted clearly better than by token frequencies alone."""

from __future__ import annotations

from saelens_gemmascope.demo.embedded_model import EmbeddedModelSettings, build_embedded_model

#: Mid-size: big and long enough to learn short-range structure, small enough for a test.
MID = EmbeddedModelSettings(
    vocab_size=512,
    d_model=64,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    d_head=16,
    d_mlp=128,
    sliding_window=16,
    context_size=64,
    batch_size=16,
    steps=100,
    warmup_steps=10,
    learning_rate=1e-2,
)
#: nats/token the model must beat the unigram baseline by.
MARGIN_NATS = 0.5


def test_heldout_cross_entropy_is_well_below_the_unigram_baseline() -> None:
    _, _, metrics = build_embedded_model(0, MID, progress=False)
    assert metrics["heldout_ce_nats"] < metrics["unigram_ce_nats"] - MARGIN_NATS, metrics
