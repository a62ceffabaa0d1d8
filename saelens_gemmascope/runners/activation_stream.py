"""The training activation stream, with a position that checkpoints save and resuming restores exactly.

Why: a SAELens checkpoint saves only the activation store's ``n_dataset_processed``. The mixing
buffer's contents (activations already computed but not yet trained on) and the torch RNG state of
its shuffles are lost, and the store fast-forwards to a dataset-row boundary, so a resumed run
trains on other batches than an uninterrupted one would have.

:class:`ResumableActivationStream` takes the place of SAELens's mixing-buffer iterator in this
package's runners. It draws LLM batches from SAELens's ``ActivationsStore`` (one model forward
pass gives every hook's activations, as before) and mixes them as SAELens's buffer does (buffer
of ``n_batches_in_buffer x context`` activations, the ``activations_mixing_fraction`` kept back,
batches of ``train_batch_size_tokens``), but shuffles with its own ``torch.Generator`` seeded by
the runner's ``seed`` and yields each batch with the :class:`StreamPosition` just after it. The
positions travel with the batches (through ``PrefetchingIterator``'s queue too), and
:class:`PositionTracker` keeps the one of the last batch the trainer took: that is what a
checkpoint saves (:data:`STREAM_STATE_FILENAME`, beside SAELens's files), however far a prefetch
thread has read ahead. Restoring re-draws the tokens of the LLM batches drawn before the
checkpoint (no model forward pass) and puts back the pool and the generator.

Checkpoint size: the unserved pool, fewer than ``keep + store_batch_size_prompts x context``
activations (``keep = n_batches_in_buffer x context x activations_mixing_fraction``) times the
sum of the hooks' ``d_in`` times 4 bytes (fp32), plus a 5 kB generator state. The tiny presets:
(512 + 1,024) x 64 x 4 B ≈ 0.4 MB per hook; a Gemma 2 2B residual hook with SAELens's
``n_batches_in_buffer=20``, context 1,024 and 32 prompts per forward pass:
(10,240 + 32,768) x 2,304 x 4 B ≈ 0.4 GB per hook, next to the SAEs' own checkpoint files.
While a prefetch queue holds batches, each queued position keeps its pool alive (views, no copies).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.prefetch import PrefetchingIterator
from safetensors.torch import load_file, save_file

from saelens_gemmascope.compat import capture_hooks, filtered_multi_hook_llm_batch
from saelens_gemmascope.recipe.transcoder import real_hooks, split_paired_hook

#: The stream's state in a checkpoint folder, written atomically after SAELens's files (then only
#: the checkpoint's manifest, :data:`saelens_gemmascope.runners.checkpoints.MANIFEST_FILENAME`,
#: which marks the checkpoint complete; older checkpoints of this package are marked by this file).
STREAM_STATE_FILENAME = "gemmascope_stream_state.safetensors"
_FORMAT = "saelens-gemmascope/stream-position/1"
_POOL_PREFIX = "pool/"

Batch = dict[str, torch.Tensor]
T = TypeVar("T")


@dataclass(frozen=True)
class StreamPosition:
    """Where a stream stands after a batch: what it needs to continue exactly from there."""

    n_llm_batches: int  # LLM batches drawn from the store since the start of training
    pool: Mapping[str, torch.Tensor]  # per hook: shuffled activations not yet served
    serve_left: int  # batches still served from the pool before the next refill
    generator_state: torch.Tensor  # the shuffle generator's state

    def save(self, path: str | Path) -> None:
        """Write to ``path`` atomically (a killed process leaves no half-written file)."""
        path = Path(path)
        tensors = {_POOL_PREFIX + hook: t.detach().contiguous().cpu() for hook, t in self.pool.items()}
        tensors["generator_state"] = self.generator_state
        metadata = {
            "format": _FORMAT,
            "n_llm_batches": str(self.n_llm_batches),
            "serve_left": str(self.serve_left),
        }
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path) -> StreamPosition:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a stream position ({metadata.get('format')!r})")
        tensors = load_file(str(path))
        return cls(
            n_llm_batches=int(metadata["n_llm_batches"]),
            pool={k.removeprefix(_POOL_PREFIX): v for k, v in tensors.items() if k.startswith(_POOL_PREFIX)},
            serve_left=int(metadata["serve_left"]),
            generator_state=tensors["generator_state"],
        )


def paired_batch(raw: Batch, keys: list[str]) -> Batch:
    """The stream's batch by ``keys`` from one forward pass's ``raw`` activations by real hook: a
    transcoder's paired key gets ``[input ; output]`` side by side, so that shuffling keeps each row's
    input with its own target. The rows are the same in every hook (one special-token mask)."""
    batch: Batch = {}
    for key in keys:
        pair = split_paired_hook(key)
        batch[key] = raw[key] if pair is None else torch.cat([raw[pair[0]], raw[pair[1]]], dim=-1)
    return batch


def capture_for_keys(store: ActivationsStore, keys: list[str], widths: Mapping[str, int]) -> None:
    """When ``keys`` hold a paired key, make ``store`` capture the real hooks (``widths``: each real
    hook's width) in one forward pass; nothing to do otherwise."""
    if any(split_paired_hook(key) is not None for key in keys):
        capture_hooks(store, {hook: widths[hook] for hook in real_hooks(keys)})


def _rows(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0] if batch else 0


def _draw_with_epoch_wrap(fetch: Callable[[bool], T]) -> T:
    # ``fetch(True)`` raises StopIteration at the end of the dataset, after the store restarted it.
    try:
        return fetch(True)
    except StopIteration:
        warnings.warn(
            "All samples in the training dataset have been used, beginning a new epoch.", stacklevel=3
        )
        try:
            return fetch(False)
        except StopIteration as err:
            raise ValueError("the dataset is too small for one LLM batch") from err


class ResumableActivationStream(Iterator[tuple[StreamPosition, Batch]]):
    """Mixed training batches (per hook) from a SAELens ``ActivationsStore``, each with its position.

    Works on a multi-hook store (``ActivationsStore.from_config_multi_hook``, the multi-SAE
    runner's) or, with ``single_hook``, on a single-hook one (live or cached activations). One
    unmixed LLM batch is the store's public ``get_filtered_llm_batch`` (single hook) or
    :func:`saelens_gemmascope.compat.filtered_multi_hook_llm_batch` (every hook, one forward pass,
    special tokens dropped: SAELens's private method of that name, re-stated from the store's public
    ``get_batch_tokens`` and ``get_multi_hook_activations``). Replay calls ``get_batch_tokens`` with
    the same epoch flag, which is all of the token stream that batch moved.
    """

    def __init__(
        self,
        store: ActivationsStore,
        *,
        buffer_tokens: int,
        batch_tokens: int,
        mix_fraction: float,
        seed: int,
        single_hook: str | None = None,
        paired_keys: list[str] | None = None,
    ) -> None:
        if buffer_tokens < batch_tokens:
            raise ValueError("the mixing buffer must hold at least one training batch")
        if not 0 <= mix_fraction <= 1:
            raise ValueError("mix_fraction must be in [0, 1]")
        self.store = store
        self.buffer_tokens = buffer_tokens
        self.batch_tokens = batch_tokens
        self.keep_tokens = int(buffer_tokens * mix_fraction)
        self.shuffle = mix_fraction > 0
        self.single_hook = single_hook
        # The keys served when some are paired (transcoders): the store captures their real hooks.
        self.paired_keys = paired_keys
        self.generator = torch.Generator().manual_seed(seed)
        self.n_llm_batches = 0
        self.pool: Batch = {}
        self.serve_left = 0
        self.generator_state = self.generator.get_state()

    @classmethod
    def for_store(
        cls,
        store: ActivationsStore,
        seed: int,
        single_hook: str | None = None,
        batch_tokens: int | None = None,
        paired_keys: list[str] | None = None,
    ) -> ResumableActivationStream:
        """The stream with the store's own buffer settings (as SAELens's data loader would use);
        ``batch_tokens`` replaces the store's batch size (a rank's share of a distributed batch);
        ``paired_keys``: serve these keys, transcoders' paired ones side by side (see
        :func:`paired_batch`; the store must capture their real hooks, :func:`capture_for_keys`)."""
        return cls(
            store,
            buffer_tokens=store.n_batches_in_buffer * store.training_context_size,
            batch_tokens=batch_tokens or store.train_batch_size_tokens,
            mix_fraction=store.activations_mixing_fraction,
            seed=seed,
            single_hook=single_hook,
            paired_keys=paired_keys,
        )

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.n_llm_batches, dict(self.pool), self.serve_left, self.generator_state)

    def restore(self, position: StreamPosition) -> None:
        """Continue from ``position``: re-draw the tokens before it (no forward pass), then its pool."""
        if self.n_llm_batches:
            raise RuntimeError("restore a stream before drawing from it")
        for _ in range(position.n_llm_batches):
            _draw_with_epoch_wrap(self._skip_llm_batch)
        device = self.store.device
        self.n_llm_batches = position.n_llm_batches
        self.pool = {hook: t.to(device) for hook, t in position.pool.items()}
        self.serve_left = position.serve_left
        self.generator.set_state(position.generator_state)
        self.generator_state = position.generator_state

    def _llm_batch(self, raise_on_epoch_end: bool) -> Batch:
        if self.single_hook is not None:
            return {
                self.single_hook: self.store.get_filtered_llm_batch(raise_on_epoch_end=raise_on_epoch_end)
            }
        raw = filtered_multi_hook_llm_batch(self.store, raise_on_epoch_end=raise_on_epoch_end)
        return raw if self.paired_keys is None else paired_batch(raw, self.paired_keys)

    def _skip_llm_batch(self, raise_on_epoch_end: bool) -> None:
        if self.store.cached_activation_dataset is not None:
            self.store.get_raw_llm_batch(raise_on_epoch_end=raise_on_epoch_end)  # reads the cache only
        else:
            self.store.get_batch_tokens(raise_at_epoch_end=raise_on_epoch_end, move_to_model_device=False)

    def _refill(self) -> None:
        # At least one new LLM batch per refill, then until the buffer is full; shuffle the lot and
        # serve all but the kept-back fraction (at least one batch).
        parts: list[Batch] = [self.pool] if self.pool else []
        n_tokens = _rows(self.pool)
        while True:
            batch = _draw_with_epoch_wrap(self._llm_batch)
            self.n_llm_batches += 1
            parts.append(batch)
            n_tokens += _rows(batch)
            if n_tokens >= self.buffer_tokens:
                break
        pool = {hook: torch.cat([part[hook] for part in parts]) for hook in parts[-1]}
        if self.shuffle:
            order = torch.randperm(n_tokens, generator=self.generator)
            pool = {hook: t[order.to(t.device)] for hook, t in pool.items()}
        self.generator_state = self.generator.get_state()
        self.pool = pool
        self.serve_left = max(1, (n_tokens - self.keep_tokens) // self.batch_tokens)

    def __iter__(self) -> ResumableActivationStream:
        return self

    def __next__(self) -> tuple[StreamPosition, Batch]:
        if self.serve_left == 0:
            self._refill()
        size = self.batch_tokens
        batch = {hook: t[:size] for hook, t in self.pool.items()}
        self.pool = {hook: t[size:] for hook, t in self.pool.items()}
        self.serve_left -= 1
        return self.position, batch


class PositionTracker(Iterator[Any]):
    """The trainer's data provider: batches without positions, keeping the last one's position.

    ``select`` picks one hook's tensor (single-SAE trainers take a tensor, not a dict).
    """

    def __init__(
        self, source: Iterator[tuple[StreamPosition, Batch]], start: StreamPosition, select: str | None = None
    ):
        self.source = source
        self.position = start
        self.select = select

    def __iter__(self) -> PositionTracker:
        return self

    def __next__(self) -> Any:
        self.position, batch = next(self.source)
        return batch if self.select is None else batch[self.select]


class PrefetchingPositionTracker(PrefetchingIterator[Any]):
    """:class:`PositionTracker` over a background prefetch thread.

    A ``PrefetchingIterator`` subclass, not a wrapper, because SAELens's multi-SAE evaluator
    pauses the producer only when the trainer's data provider is a ``PrefetchingIterator``.
    """

    def __init__(
        self,
        source: ResumableActivationStream,
        prefetch: int,
        start: StreamPosition,
        select: str | None = None,
    ) -> None:
        super().__init__(source, prefetch=prefetch)
        self.position = start
        self.select = select

    def __next__(self) -> Any:
        self.position, batch = super().__next__()
        return batch if self.select is None else batch[self.select]


def tracked_batches(
    stream: ResumableActivationStream, prefetch: bool | int, select: str | None = None
) -> PositionTracker | PrefetchingPositionTracker:
    """The data provider for a trainer: prefetched on a thread when ``prefetch`` (SAELens's
    ``prefetch_llm_batches``: True is a queue of one), with the position of the last batch taken."""
    start = stream.position
    if not prefetch:
        return PositionTracker(stream, start, select)
    size = 1 if isinstance(prefetch, bool) else prefetch
    return PrefetchingPositionTracker(stream, size, start, select)


def restore_stream(stream: ResumableActivationStream, checkpoint: str | Path) -> bool:
    """Restore ``stream`` from a checkpoint's saved position; False (and nothing done) when the
    checkpoint has none, e.g. one written by SAELens's own runners."""
    path = Path(checkpoint) / STREAM_STATE_FILENAME
    if not path.is_file():
        return False
    stream.restore(StreamPosition.load(path))
    return True
