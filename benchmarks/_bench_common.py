"""Helpers shared by the benchmarks: device choice and timing, the models they run (the tiny Gemma 2,
or a full-size Gemma 2 2B with random weights, built without the hub), the command-line options they
all take, and a timed training run with its model forward passes counted."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    import datasets
    from sae_lens import HookedSAETransformer

GEMMA2_2B_RANDOM = "gemma-2-2b-random"
TINY = "tiny"
MODEL_CHOICES = (TINY, GEMMA2_2B_RANDOM)
#: SAE step precision: fp32, fp32 inputs with TF32 matmuls, or bf16 autocast (the trainers' autocast=True).
PRECISIONS = ("fp32", "tf32", "bf16")
#: Batches SAELens's input-scale estimate reads before training (the runners' n_batches_for_norm_estimate).
NORM_ESTIMATE_BATCHES = 8

T = TypeVar("T")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: str | torch.device) -> None:
    """Wait for queued kernels: CUDA timings are meaningless without it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def set_matmul_precision(precision: str) -> None:
    # tf32 only changes fp32 matmuls; under bf16 autocast the fp32 matmuls left stay exact.
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


@dataclass
class BenchModel:
    """A TransformerLens Gemma 2 on its device, with the hook the benchmarks read."""

    name: str
    model: HookedSAETransformer
    layer: int
    context: int
    d_model: int

    @property
    def hook(self) -> str:
        return self.resid_hook(self.layer)

    @staticmethod
    def resid_hook(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_post"

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_vocab(self) -> int:
        return int(self.model.cfg.d_vocab)


def build_bench_model(name: str, device: str, dtype: torch.dtype = torch.float32) -> BenchModel:
    """``tiny``: the tiny Gemma 2 (layer 1, context 128). ``gemma-2-2b-random``: gemma-2-2b's
    dimensions (GEMMA2_DIMS) with random weights, layer 12 and context 1,024, as the paper's
    residual-stream SAEs of the middle layer would see them."""
    from saelens_gemmascope.demo.tiny_model import build_tiny_gemma2
    from saelens_gemmascope.demo.tokenizer import build_byte_tokenizer
    from saelens_gemmascope.models.bridge import hooked_transformer_from_hf

    if name == TINY:
        tiny = build_tiny_gemma2(seed=0).tl_model.to(device, print_details=False)
        if dtype != torch.float32:
            tiny = tiny.to(dtype, print_details=False)
        return BenchModel(name, tiny, layer=1, context=128, d_model=int(tiny.cfg.d_model))
    if name != GEMMA2_2B_RANDOM:
        raise ValueError(f"unknown model {name!r}; choose from {MODEL_CHOICES}")

    from transformers import Gemma2ForCausalLM

    from saelens_gemmascope.demo.tiny_model import small_gemma2_config
    from saelens_gemmascope.models.gemma2 import GEMMA2_DIMS

    dims = GEMMA2_DIMS["gemma-2-2b"]
    # gemma-2-2b's own position limit, sliding window and initialiser range; soft-caps as released.
    config = small_gemma2_config(
        dims, name=GEMMA2_2B_RANDOM, max_positions=8192, sliding_window=4096, initializer_range=0.02
    )
    # Random init directly on the device: 2.6B parameters take minutes to initialise on a CPU.
    with torch.device(device), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf_model = Gemma2ForCausalLM(config).to(dtype).eval()
    # The byte tokenizer only supplies BOS and the special-token ids SAELens's store excludes.
    model = hooked_transformer_from_hf(hf_model, build_byte_tokenizer(), model_name=GEMMA2_2B_RANDOM)
    del hf_model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return BenchModel(name, model, layer=12, context=1024, d_model=dims.d_model)


def describe_device(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} torch threads)"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --device and --threads; :func:`resolve_device` fills the device default after parsing."""
    parser.add_argument("--model", choices=MODEL_CHOICES, default=TINY)
    parser.add_argument("--device", default=None, help="default: cuda for the 2B if available, else cpu")
    # One thread: the tiny model's tensors are small, and on a shared, busy CPU a second thread made
    # its forward pass 30x slower (measured with bench_suite.py).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def resolve_device(args: argparse.Namespace) -> None:
    """The 2B on CUDA where there is one; the tiny model on the CPU unless ``--device`` says otherwise."""
    args.device = args.device or (default_device() if args.model == GEMMA2_2B_RANDOM else "cpu")


@dataclass
class ForwardCounter:
    """Counts the language model's forward calls and the tokens they ran on (a transcoder's two
    hooks, or N SAEs sharing a pass, share each call)."""

    calls: int = 0
    tokens: int = 0

    def hook(self, _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tokens = args[0] if args else kwargs.get("input")
        self.calls += 1
        if isinstance(tokens, torch.Tensor):
            self.tokens += tokens.numel()


def timed_training(bench: BenchModel, device: str, run: Callable[[], T]) -> tuple[T, float, ForwardCounter]:
    """``run()``'s result, its wall time in seconds and the model forward passes it made."""
    counter = ForwardCounter()
    handle = bench.model.register_forward_pre_hook(counter.hook, with_kwargs=True)
    try:
        synchronize(device)
        start = time.perf_counter()
        # Library chatter (SAELens's override warnings) to nowhere; an exception still surfaces.
        with open(os.devnull, "w") as muted, contextlib.redirect_stderr(muted):
            result = run()
        synchronize(device)
        wall = time.perf_counter() - start
    finally:
        handle.remove()
    return result, wall, counter


def training_token_dataset(
    bench: BenchModel, *, tokens: int, context: int, batch: int, buffer_batches: int, store_prompts: int
) -> datasets.Dataset:
    """Standard-library rows enough for one run's training tokens plus the norm estimate and the
    mixing buffer, so that no run repeats rows within itself (stdlib_token_dataset cycles when asked
    for more)."""
    from saelens_gemmascope.data import stdlib_token_dataset

    needed = tokens + NORM_ESTIMATE_BATCHES * batch + 2 * buffer_batches * store_prompts * context
    return stdlib_token_dataset(bench.model.tokenizer, context, n_sequences=math.ceil(needed / context))
