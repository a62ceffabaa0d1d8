"""The embedded default model: a tiny Gemma 2 trained on Python's own help text, built on first use.

``load_embedded_model()`` trains a byte-level BPE tokenizer and a small Gemma-2-architecture
language model (every Gemma 2 feature: pre- and post-RMSNorm, attention and final-logit soft-caps,
sliding-window attention on alternating layers, grouped-query attention, gated gelu-tanh MLP, tied
embeddings scaled by sqrt(d_model)) on the ``pydoc_data.topics`` help text that ships with CPython,
then caches the result under ``<user cache>/tiny-gemma-2-stdlib/<key>/``: the HF model
(``save_pretrained``, safetensors), the tokenizer files and ``metrics.json`` (held-out and unigram
cross-entropy, the settings, library versions). Later calls load that directory from disk only.

Why a cache rather than shipped weights: training is deterministic only on one machine and one
torch build (float summation order depends on the CPU kernels), so shipped weights could not be
reproduced bit-for-bit by a user's script, and the training text itself is whatever the running
CPython ships, which changes between Python versions. Building locally keeps code, text and
weights consistent by construction: the cache key hashes the settings, the seed, the text and a
format version, so any change rebuilds. The cost is one build the first time: 40-65 s on two
shared, busy CPU cores (tokenizer about 1 s, the rest training); a cached load takes about 0.2 s.

Determinism: the build runs with a fixed torch thread count (``EmbeddedModelSettings.num_threads``),
``torch.use_deterministic_algorithms(True)``, a seeded initialisation and a seeded batch sampler;
no dropout. The same seed and settings give bit-identical weights on the same machine and torch.
The global torch RNG, thread count and determinism flag are restored afterwards.

The held-out split is the last ``holdout_fraction`` of the text, cut exactly as
:func:`saelens_gemmascope.data.stdlib_text.stdlib_token_dataset` cuts it, so evaluations run on
``stdlib_token_dataset(..., holdout=True)`` never see training text; the tokenizer too is trained
on the training part only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saelens_gemmascope.cache_dir import CACHE_HOME_ENV
from saelens_gemmascope.demo.tiny_model import TinyGemma2, small_gemma2_config
from saelens_gemmascope.demo.tokenizer import BOS_ID
from saelens_gemmascope.models.gemma2 import Gemma2Dims, gemma2_spec

if TYPE_CHECKING:
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    from saelens_gemmascope.models.spec import ModelSpec

EMBEDDED_MODEL_NAME = "tiny-gemma-2-stdlib"
METRICS_FILENAME = "metrics.json"
#: Bump when the cached content changes meaning (training code, file layout), so old builds rebuild.
CACHE_FORMAT = 1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModelSettings:
    """Everything that determines the trained model, apart from the seed and the text."""

    #: 1,024 rather than 2,048: the soft-capped logits dominate a step's cost at this size, and the
    #: smaller vocabulary gave the better held-out loss per second of training.
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    #: 4 x 16 = 64 attention width, unlike d_model, as in the real models (2b: 2048 vs 2304).
    d_head: int = 16
    #: 2 x d_model (Gemma 2 uses 4x-8x): at a fixed time budget, more steps beat a wider MLP.
    d_mlp: int = 256
    #: Shorter than the context, so the local (even) layers really see less than the global ones.
    sliding_window: int = 32
    context_size: int = 128
    batch_size: int = 16
    steps: int = 200
    learning_rate: float = 1e-2
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    holdout_fraction: float = 0.1
    #: Fixed, because the float summation order (hence the bits) depends on the thread count. One
    #: thread: at this size the kernels are too small to gain from more, and on a shared machine
    #: a second thread spent most of its time waiting (6x slower per step on a loaded 2-core box).
    num_threads: int = 1

    def dims(self) -> Gemma2Dims:
        return Gemma2Dims(
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            d_head=self.d_head,
            d_mlp=self.d_mlp,
            d_vocab=self.vocab_size,
        )


DEFAULT_SETTINGS = EmbeddedModelSettings()


@dataclass
class EmbeddedModel(TinyGemma2):
    """The trained model in both forms, its tokenizer and spec, plus its build metrics."""

    metrics: dict[str, Any]
    directory: Path


def embedded_model_spec(settings: EmbeddedModelSettings = DEFAULT_SETTINGS) -> ModelSpec:
    # No hub repo: the model is built locally (load_embedded_model).
    return gemma2_spec(EMBEDDED_MODEL_NAME, settings.dims(), hf_repo="")


def embedded_model_hf_config(settings: EmbeddedModelSettings) -> Gemma2Config:
    return small_gemma2_config(
        settings.dims(),
        name=EMBEDDED_MODEL_NAME,
        max_positions=settings.context_size,
        sliding_window=settings.sliding_window,
        initializer_range=0.02,  # Gemma's own
    )


# --- the text and the cache key -------------------------------------------------------------------


def split_stdlib_text(holdout_fraction: float) -> tuple[str, str]:
    """(training text, held-out text), cut where ``stdlib_token_dataset`` cuts."""
    from saelens_gemmascope.data.stdlib_text import stdlib_split

    return stdlib_split(holdout_fraction)


def cache_key(settings: EmbeddedModelSettings, seed: int, train_text: str, heldout_text: str) -> str:
    identity = {
        "format": CACHE_FORMAT,
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "train_text_sha256": hashlib.sha256(train_text.encode()).hexdigest(),
        "heldout_text_sha256": hashlib.sha256(heldout_text.encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def embedded_model_dir(
    seed: int = 0, settings: EmbeddedModelSettings = DEFAULT_SETTINGS, cache_dir: str | Path | None = None
) -> Path:
    """Where this seed and these settings are (or would be) cached."""
    from saelens_gemmascope.cache_dir import user_cache_dir

    train_text, heldout_text = split_stdlib_text(settings.holdout_fraction)
    root = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    return root / EMBEDDED_MODEL_NAME / cache_key(settings, seed, train_text, heldout_text)


# --- training ------------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic_torch(num_threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the block; the caller's state comes back after."""
    import torch

    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def token_ids(tokenizer: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    import torch

    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def heldout_rows(ids: torch.Tensor, context_size: int) -> torch.Tensor:
    """Non-overlapping rows of ``context_size`` tokens, each BOS then text (as stdlib_token_dataset)."""
    import torch

    body = context_size - 1
    n_rows = len(ids) // body
    if n_rows == 0:
        raise ValueError(f"held-out text is shorter than one row of {context_size} tokens")
    rows = ids[: n_rows * body].view(n_rows, body)
    return torch.cat([torch.full((n_rows, 1), BOS_ID, dtype=torch.long), rows], dim=1)


def sample_batch(
    ids: torch.Tensor, settings: EmbeddedModelSettings, generator: torch.Generator
) -> torch.Tensor:
    """Windows at random offsets of the training tokens, each prefixed with BOS."""
    import torch

    body = settings.context_size - 1
    starts = torch.randint(0, len(ids) - body + 1, (settings.batch_size,), generator=generator)
    windows = torch.stack([ids[start : start + body] for start in starts.tolist()])
    return torch.cat([torch.full((settings.batch_size, 1), BOS_ID, dtype=torch.long), windows], dim=1)


def next_token_loss(model: Gemma2ForCausalLM, rows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of every token after the BOS, given the tokens before it."""
    import torch.nn.functional as F

    logits = model(rows).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


def learning_rate_at(step: int, settings: EmbeddedModelSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_language_model(
    train_ids: torch.Tensor, settings: EmbeddedModelSettings, seed: int, progress: bool = True
) -> tuple[Gemma2ForCausalLM, float]:
    """A Gemma 2 trained from scratch on ``train_ids``; returns it (eval mode) and its last-batch loss.

    Call inside :func:`deterministic_torch` for reproducible bits.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import Gemma2ForCausalLM

    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(embedded_model_hf_config(settings)).train()
    # Weight decay on matrices only, as usual: decaying norm gains (applied as 1 + w) would be harmless
    # but decaying them is not what anybody means.
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    kept = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": settings.weight_decay}, {"params": kept, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    bar = tqdm(range(settings.steps), desc=f"training {EMBEDDED_MODEL_NAME}", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, settings)
        loss = next_token_loss(model, sample_batch(train_ids, settings, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        loss_value = loss.item()
        if step % 10 == 0 or step == settings.steps - 1:
            bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    return model.eval(), loss_value


def heldout_cross_entropy(model: Gemma2ForCausalLM, rows: torch.Tensor, batch_size: int = 32) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            n_targets = batch[:, 1:].numel()
            total += next_token_loss(model, batch).item() * n_targets
            count += n_targets
    return total / count


def unigram_cross_entropy(train_ids: torch.Tensor, heldout_targets: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the held-out targets under add-one smoothed training frequencies.

    The baseline a model that ignores context would reach; smoothing keeps tokens unseen in
    training finite.
    """
    import torch

    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    log_probs = counts.log() - counts.sum().log()
    return float(-log_probs[heldout_targets].mean())


# --- building, saving, loading --------------------------------------------------------------------


def build_embedded_model(
    seed: int = 0, settings: EmbeddedModelSettings = DEFAULT_SETTINGS, progress: bool = True
) -> tuple[Gemma2ForCausalLM, PreTrainedTokenizerFast, dict[str, Any]]:
    """Train tokenizer and model from scratch (no cache): (HF model, tokenizer, metrics)."""
    import tokenizers
    import torch
    import transformers

    from saelens_gemmascope.demo.bpe_tokenizer import train_bpe_tokenizer

    start = time.perf_counter()
    train_text, heldout_text = split_stdlib_text(settings.holdout_fraction)
    tokenizer = train_bpe_tokenizer([train_text], settings.vocab_size)
    train_ids = token_ids(tokenizer, train_text)
    rows = heldout_rows(token_ids(tokenizer, heldout_text), settings.context_size)
    with deterministic_torch(settings.num_threads):
        model, final_loss = train_language_model(train_ids, settings, seed, progress)
        heldout_ce = heldout_cross_entropy(model, rows)
    metrics = {
        "model": EMBEDDED_MODEL_NAME,
        "format": CACHE_FORMAT,
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "heldout_ce_nats": heldout_ce,
        "unigram_ce_nats": unigram_cross_entropy(train_ids, rows[:, 1:].reshape(-1), settings.vocab_size),
        "final_train_batch_loss_nats": final_loss,
        "tokenizer_vocab_size": len(tokenizer),
        "n_train_tokens": len(train_ids),
        "n_heldout_targets": rows[:, 1:].numel(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": time.perf_counter() - start,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    return model, tokenizer, metrics


@contextlib.contextmanager
def quiet_transformers_progress() -> Iterator[None]:
    """Hide transformers' per-call "Loading weights" / "Writing model shards" bars for a 2 MB model."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _unwritable(directory: Path, err: OSError) -> OSError:
    return OSError(
        f"cannot write the model cache {directory} ({err}); set {CACHE_HOME_ENV} to a writable directory"
        " or pass cache_dir"
    )


def _save(
    directory: Path, model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast, metrics: dict[str, Any]
) -> None:
    """Write into a sibling temporary directory, then rename: a half-written build is never visible."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    except OSError as err:
        raise _unwritable(directory, err) from err
    try:
        with quiet_transformers_progress():
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / METRICS_FILENAME).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        os.replace(staging, directory)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        # Another process may have finished the same build first (the rename target exists): keep it.
        if not (directory / METRICS_FILENAME).is_file():
            raise _unwritable(directory, err) from err


def _load(directory: Path) -> tuple[Gemma2ForCausalLM, PreTrainedTokenizerFast, dict[str, Any]]:
    import torch
    from transformers import Gemma2ForCausalLM

    from saelens_gemmascope.demo.bpe_tokenizer import load_bpe_tokenizer

    metrics = json.loads((directory / METRICS_FILENAME).read_text())
    with quiet_transformers_progress():
        model = Gemma2ForCausalLM.from_pretrained(
            directory, local_files_only=True, attn_implementation="eager", dtype=torch.float32
        )
    return model.eval(), load_bpe_tokenizer(directory), metrics


def load_embedded_model(
    seed: int = 0,
    *,
    settings: EmbeddedModelSettings = DEFAULT_SETTINGS,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> EmbeddedModel:
    """The embedded default model: loaded from the cache, or trained and cached on first use.

    ``cache_dir`` replaces the user cache directory (:func:`saelens_gemmascope.cache_dir.user_cache_dir`);
    ``rebuild`` retrains even if a cached build exists. Never touches the network.
    """
    from saelens_gemmascope.models.bridge import hooked_transformer_from_hf

    directory = embedded_model_dir(seed, settings, cache_dir)
    if rebuild and directory.exists():
        shutil.rmtree(directory)
    if not (directory / METRICS_FILENAME).is_file():
        logger.info("building %s (seed %d) into %s", EMBEDDED_MODEL_NAME, seed, directory)
        model, tokenizer, metrics = build_embedded_model(seed, settings, progress)
        _save(directory, model, tokenizer, metrics)
    # Always load what is on disk, so a fresh build and a cached one are the same objects.
    hf_model, tokenizer, metrics = _load(directory)
    tl_model = hooked_transformer_from_hf(hf_model, tokenizer, model_name=EMBEDDED_MODEL_NAME)
    return EmbeddedModel(
        hf_model=hf_model,
        tl_model=tl_model,
        tokenizer=tokenizer,
        spec=embedded_model_spec(settings),
        metrics=metrics,
        directory=directory,
    )
