"""Benchmark: one SAE training step, SAELens's JumpReLU vs the recipe's trainer, dense and fast paths.

A step is what a trainer does per batch: forward, backward, optimiser, decoder constraint (and
SAELens's gradient clipping, the recipe's gradient projection). Methods, each stepped through its
trainer's public per-batch seam ``SAETrainer.step`` (what ``fit()`` calls, minus logging):

* (a) ``saelens`` (the baseline; every ratio is against it): SAELens's ``JumpReLUTrainingSAE``
  stepped by SAELens's ``SAETrainer``.
* (b) ``recipe-dense``: ``jumprelu_gemmascope`` stepped by ``GemmaScopeSAETrainer`` with
  ``fast_path="dense"``, the reference path.
* (c) ``recipe-sparse`` and (d) ``recipe-auto``: the same with ``fast_path="sparse"``/``"auto"``.
  The "path" column says which path the last step took (``last_step_path``).

Equal numerics: every method starts from the same weights (SAELens's init with unit decoder rows,
b_dec at the data mean, copied into each SAE), steps on the same fixed synthetic batches (iid
Gaussian rows with E‖x‖² = 1, the recipe's input scale, so C = 1) with the same η, betas, λ and
bandwidth ε, and has per-latent thresholds at the pre-activations' quantile over those batches
where the target L0 latents fire per row on average. η is tiny (1e-7) so that L0 stays there while
the steps are timed; the work of a step does not depend on η. The L0 each method had over one
more (untimed) pass through the batches is printed.

A step's time is the median of the timed steps, each synchronised on its own, after warm-up
steps. Reference figures, measured in the same run: the encoder product (batch x d_in @ d_in x
d_sae, in the chosen precision) and the copy bandwidth of a large tensor. "mm frac" is the encoder
product's time over the step's time: how close the step gets to costing one encoder matmul. The ideal step
is that product plus Adam's memory traffic (7 fp32 accesses per parameter: read parameter,
gradient, both moments; write parameter and both moments) at the copy bandwidth; "vs ideal" is the
step time over it (issue 8's goal: within 2x).

``--pipeline`` (default on CUDA) adds the full path: a Gemma 2 (a full-size random-weight Gemma 2
2B, or ``--pipeline-model tiny``) runs to the middle layer's residual stream with
``stop_at_layer``, then each of 1 or a ladder of 6 SAEs steps on every batch of that forward pass:
tokens/s and the split between the model forward and the SAE steps.

    python benchmarks/bench_step.py [--device cuda] [--precision fp32|tf32|bf16] [--d-sae 16384,65536]
        [--batch 4096] [--l0 100] [--steps 20] [--quick] [--pipeline --pipeline-model tiny]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _bench_common import (
    GEMMA2_2B_RANDOM,
    MODEL_CHOICES,
    PRECISIONS,
    TINY,
    BenchModel,
    build_bench_model,
    default_device,
    describe_device,
    set_matmul_precision,
    synchronize,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

import saelens_gemmascope  # noqa: F401  (registers jumprelu_gemmascope)
from saelens_gemmascope.recipe import GemmaScopeSAETrainer, gemmascope_sae_config
from saelens_gemmascope.recipe.sae import GemmaScopeTrainingSAE

# Shared by every method so that only the implementation differs (the recipe's values but η).
# η is tiny so that the weights, and with them L0, stay where they were set while the steps are
# timed: at the recipe's 7e-5, six steps on a random model's activations cut L0 by a third. No work
# depends on η's value.
LR = 1e-7
BETAS = (0.0, 0.999)
L0_COEFFICIENT = 1e-3
BANDWIDTH = 1e-3
# Adam reads parameter, gradient and both moments and writes parameter and both moments, in fp32
# (master weights stay fp32 under autocast).
ADAM_BYTES_PER_PARAM = 7 * 4


@dataclass(frozen=True)
class Method:
    label: str
    fast_path: str | None  # None: SAELens's SAE and trainer


METHODS = (
    Method("(a) saelens", None),
    Method("(b) recipe-dense", "dense"),
    Method("(c) recipe-sparse", "sparse"),
    Method("(d) recipe-auto", "auto"),
)


@dataclass(frozen=True)
class Setup:
    device: str
    precision: str
    l0: float

    @property
    def autocast(self) -> bool:
        return self.precision == "bf16"

    def autocast_context(self) -> AbstractContextManager[Any]:
        if not self.autocast:
            return nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)


# -- timing and memory -------------------------------------------------------------------------


def seconds_per_call(fn: Callable[[], Any], device: str, min_seconds: float = 0.2) -> float:
    """Mean time of ``fn`` after one warm-up call, doubling the number of calls until they take
    ``min_seconds`` together."""
    fn()
    synchronize(device)
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= 1024:
            return elapsed / calls
        calls *= 2


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one method above what was allocated before it: CUDA's allocator peak, or on
    CPU the peak resident set (Linux resets its high-water mark on writing 5 to clear_refs)."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.base: int | None = None

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:
            # Hand freed heap back to the OS first, or the next method reuses resident pages unseen.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
        except OSError:
            self.base = None
            return
        rss = _proc_status_kib("VmRSS")
        self.base = None if rss is None else rss * 1024

    def peak_mib(self) -> float | None:
        if self.base is None:
            return None
        if self.cuda:
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        hwm = _proc_status_kib("VmHWM")
        return None if hwm is None else (hwm * 1024 - self.base) / 2**20


@dataclass
class Reference:
    """The device's rates in this run: the encoder product and the copy bandwidth."""

    matmul_s: float
    matmul_flops: float
    bandwidth: float  # bytes/s, read plus write
    adam_s: float

    @property
    def ideal_s(self) -> float:
        return self.matmul_s + self.adam_s


def encoder_product_seconds(d_in: int, d_sae: int, batch: int, setup: Setup) -> float:
    dtype = torch.bfloat16 if setup.precision == "bf16" else torch.float32
    a = torch.randn(batch, d_in, device=setup.device, dtype=dtype)
    b = torch.randn(d_in, d_sae, device=setup.device, dtype=dtype)
    out = torch.empty(batch, d_sae, device=setup.device, dtype=dtype)
    return seconds_per_call(lambda: torch.matmul(a, b, out=out), setup.device)


def copy_bandwidth(device: str) -> float:
    """Bytes per second, read plus write, of copying a large fp32 tensor (1 GiB; 128 MiB on CPU)."""
    n = (256 if torch.device(device).type == "cuda" else 32) * 2**20
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / seconds_per_call(lambda: dst.copy_(src), device)


def measure_reference(d_in: int, d_sae: int, batch: int, setup: Setup) -> Reference:
    matmul_s = encoder_product_seconds(d_in, d_sae, batch, setup)
    bandwidth = copy_bandwidth(setup.device)
    n_params = 2 * d_in * d_sae + 2 * d_sae + d_in  # W_enc, W_dec, b_enc, threshold, b_dec
    return Reference(
        matmul_s=matmul_s,
        matmul_flops=2 * batch * d_in * d_sae / matmul_s,
        bandwidth=bandwidth,
        adam_s=n_params * ADAM_BYTES_PER_PARAM / bandwidth,
    )


# -- the SAEs, their shared start and their trainers ---------------------------------------------


def synthetic_batches(d_in: int, batch: int, n: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """iid Gaussian rows with E‖x‖² = 1: already at the recipe's input scale, so C = 1."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, d_in, generator=generator) / math.sqrt(d_in)).to(device) for _ in range(n)]


def saelens_sae_config(d_in: int, d_sae: int, device: str) -> JumpReLUTrainingSAEConfig:
    return JumpReLUTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, device=device, l0_coefficient=L0_COEFFICIENT,
        jumprelu_bandwidth=BANDWIDTH, decoder_init_norm=1.0,
    )  # fmt: skip


@torch.no_grad()
def reference_state(d_sae: int, batches: list[torch.Tensor], setup: Setup) -> dict[str, torch.Tensor]:
    """Initial weights for every method, on the CPU: SAELens's init with unit decoder rows (the
    recipe's), and per latent the θ that exactly ``round(rows·l0/d_sae)`` of all the rows of
    ``batches`` exceed (pre-activations in the precision the steps run in), so that the steps,
    which cycle over these batches, average L0 ≈ ``l0``."""
    d_in = batches[0].shape[1]
    total_rows = sum(batch.shape[0] for batch in batches)
    fires = min(total_rows - 1, max(1, round(total_rows * setup.l0 / d_sae)))
    torch.manual_seed(0)
    sae = JumpReLUTrainingSAE(saelens_sae_config(d_in, d_sae, setup.device))
    # b_dec at the data mean (where training takes it), so that every latent's pre-activations
    # centre on its bias and θ lands above 0 for any L0 under d_sae/2.
    sae.b_dec.copy_(torch.cat(batches).mean(0))
    # Each batch's top fires+1 values per latent hold the overall top fires+1: no need to keep
    # all pre-activations (4 x 4096 x 65536 floats at the default sizes).
    candidates = []
    for batch in batches:
        with setup.autocast_context():
            _, hidden_pre = sae.encode_with_hidden_pre(batch)
        candidates.append(hidden_pre.float().topk(min(fires + 1, batch.shape[0]), dim=0).values)
        del hidden_pre
    # JumpReLU passes pre > θ: θ at the (fires+1)-th largest lets exactly `fires` rows through.
    # SAELens clamps θ at 0 before each step and the recipe after it; clamp here so both agree.
    theta = torch.cat(candidates).topk(fires + 1, dim=0).values[-1].clamp(min=0.0)
    sae.threshold.copy_(theta)
    state = {name: value.detach().cpu().clone() for name, value in sae.state_dict().items()}
    del sae, candidates
    return state


def build_trainer(
    method: Method, state: dict[str, torch.Tensor], batch: int, setup: Setup, data: Iterator[torch.Tensor]
) -> SAETrainer[Any, Any]:
    d_sae, d_in = state["W_enc"].shape[1], state["W_enc"].shape[0]
    cfg = SAETrainerConfig(
        total_training_samples=batch * 10**9, train_batch_size_samples=batch, lr=LR, lr_end=LR,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], device=setup.device, autocast=setup.autocast,
    )  # fmt: skip
    if method.fast_path is None:
        saelens_sae = JumpReLUTrainingSAE(saelens_sae_config(d_in, d_sae, setup.device))
        saelens_sae.load_state_dict(state)
        return SAETrainer(cfg=cfg, sae=saelens_sae, data_provider=data)
    sae = GemmaScopeTrainingSAE(
        gemmascope_sae_config(
            d_in, d_sae, L0_COEFFICIENT, l0_warm_up_steps=0, jumprelu_bandwidth=BANDWIDTH,
            device=setup.device, fast_path=method.fast_path,
        )
    )  # fmt: skip
    sae.load_state_dict(state)
    trainer = GemmaScopeSAETrainer(cfg=cfg, sae=sae, data_provider=data)
    # What ensure_input_scale() would set for inputs at E‖x‖² = 1; the multiply by 1/C still runs.
    trainer.activation_scaler.scaling_factor = 1.0
    return trainer


def train_step(trainer: SAETrainer[Any, Any], batch: torch.Tensor) -> TrainStepOutput:
    """One step as fit() takes it (its logging, evals and checkpoints are off here)."""
    output = trainer.step(batch)
    trainer.n_training_steps += 1
    return output


def measured_l0(output: TrainStepOutput) -> float:
    acts = output.feature_acts
    if acts.layout != torch.strided:
        acts = acts.to_dense()
    return float((acts != 0).float().sum(-1).mean())


# -- one step ------------------------------------------------------------------------------------


@dataclass
class StepResult:
    method: Method
    seconds: float
    l0: float
    peak_mib: float | None
    path: str  # the path the last step took ("dense"/"sparse"), "-" for SAELens


def step_path(trainer: SAETrainer[Any, Any]) -> str:
    """Which path the recipe SAE's last step took (its ``last_step_path``, when it has one)."""
    return str(getattr(trainer.sae, "last_step_path", None) or "-")


def time_method(
    method: Method, state: dict[str, torch.Tensor], batches: list[torch.Tensor], setup: Setup,
    warm_up: int, steps: int,
) -> StepResult:  # fmt: skip
    memory = PeakMemory(setup.device)
    memory.start()
    data = itertools.cycle(batches)
    trainer = build_trainer(method, state, batches[0].shape[0], setup, data)
    # Like fit(), the previous step's output stays alive while the next step runs.
    output = None
    for _ in range(warm_up):
        output = train_step(trainer, next(data))
    # Each step timed on its own and the median kept: robust to a busy, shared CPU. The sync this
    # adds costs little, as both trainers' steps already wait on the device (boolean indexing in
    # their dead-latent bookkeeping).
    times = []
    for _ in range(steps):
        synchronize(setup.device)
        start = time.perf_counter()
        output = train_step(trainer, next(data))
        synchronize(setup.device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = memory.peak_mib()
    # Untimed: L0 over one more pass through the fixed batches (reading it costs a sync per step).
    l0 = sum(measured_l0(train_step(trainer, batch)) for batch in batches) / len(batches)
    result = StepResult(method, seconds, l0, peak, step_path(trainer))
    del trainer, output
    gc.collect()
    return result


def fmt_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def run_steps(args: argparse.Namespace, setup: Setup) -> None:
    print(
        f"\n== one training step: d_in {args.d_in}, batch {args.batch}, target L0 {setup.l0:g}, "
        f"{args.warm_up} warm-up steps, then the median of {args.steps} timed ones; {args.n_batches} fixed batches =="
    )
    batches = synthetic_batches(args.d_in, args.batch, args.n_batches, setup.device)
    for d_sae in args.d_sae:
        ref = measure_reference(args.d_in, d_sae, args.batch, setup)
        print(
            f"\nd_sae {d_sae}: encoder product {args.batch}x{args.d_in} @ {args.d_in}x{d_sae} "
            f"({setup.precision}) {ref.matmul_s * 1e3:.3f} ms = {ref.matmul_flops / 1e12:.2f} TFLOP/s; "
            f"copy bandwidth {ref.bandwidth / 1e9:.1f} GB/s; Adam traffic {ref.adam_s * 1e3:.3f} ms; "
            f"ideal step {ref.ideal_s * 1e3:.3f} ms"
        )
        state = reference_state(d_sae, batches, setup)
        print(
            f"{'method':<18} {'path':>6} {'L0':>6} {'ms/step':>9} {'steps/s':>8} {'tokens/s':>10} {'peak MiB':>9} "
            f"{'vs (a)':>7} {'mm frac':>8} {'vs ideal':>9}"
        )
        baseline: float | None = None
        for method in METHODS:
            r = time_method(method, state, batches, setup, args.warm_up, args.steps)
            steps_per_s = 1.0 / r.seconds
            baseline = baseline or steps_per_s
            print(
                f"{method.label:<18} {r.path:>6} {r.l0:>6.1f} {r.seconds * 1e3:>9.3f} {steps_per_s:>8.2f} "
                f"{args.batch * steps_per_s:>10.0f} {fmt_mib(r.peak_mib):>9} {steps_per_s / baseline:>6.2f}x "
                f"{ref.matmul_s / r.seconds:>8.1%} {r.seconds / ref.ideal_s:>8.2f}x",
                flush=True,
            )
        del state
    del batches
    gc.collect()


# -- the full pipeline: model forward to the hook, then the SAE steps -----------------------------


def pipeline_batches(bench: BenchModel, tokens: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """The hook's activations as SAE batches of fp32 rows, scaled to E‖x‖² = 1 (the recipe's C,
    applied here for every method); a remainder short of a batch is dropped."""
    with torch.no_grad():
        _, cache = bench.model.run_with_cache(
            tokens, names_filter=[bench.hook], stop_at_layer=bench.layer + 1
        )
        acts = cache[bench.hook].reshape(-1, bench.d_model).float()
        acts = acts * acts.pow(2).sum(-1).mean().rsqrt()
        return list(acts[: acts.shape[0] // batch * batch].split(batch))


@dataclass
class PipelineResult:
    n_saes: int
    forward_s: float  # per forward pass
    sae_s: float  # SAE steps per forward pass, all SAEs
    tokens: int  # tokens per forward pass that the SAEs train on
    l0: float
    path: str

    @property
    def tokens_per_s_per_sae(self) -> float:
        return self.tokens / (self.forward_s + self.sae_s)


def time_pipeline(
    trainers: list[SAETrainer[Any, Any]], bench: BenchModel, tokens: torch.Tensor, batch: int,
    forwards: int, device: str,
) -> PipelineResult:  # fmt: skip
    forward_s = sae_s = 0.0
    n_tokens = 0
    for rep in range(1 + forwards):  # the first is a warm-up
        synchronize(device)
        start = time.perf_counter()
        batches = pipeline_batches(bench, tokens, batch)
        synchronize(device)
        mid = time.perf_counter()
        # As MultiSAETrainer: every SAE steps on a batch before the next batch.
        for sae_batch in batches:
            for trainer in trainers:
                train_step(trainer, sae_batch)
        synchronize(device)
        end = time.perf_counter()
        if rep > 0:
            forward_s += mid - start
            sae_s += end - mid
        n_tokens = sum(b.shape[0] for b in batches)
        del batches
    # Untimed: the first SAE's L0 over one more forward's batches.
    batches = pipeline_batches(bench, tokens, batch)
    l0 = sum(measured_l0(train_step(trainers[0], b)) for b in batches) / len(batches)
    return PipelineResult(
        len(trainers), forward_s / forwards, sae_s / forwards, n_tokens, l0, step_path(trainers[0])
    )


def run_pipeline(args: argparse.Namespace, setup: Setup) -> None:
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.pipeline_dtype]
    start = time.perf_counter()
    bench = build_bench_model(args.pipeline_model, setup.device, dtype)
    built_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, bench.d_vocab, (args.pipeline_prompts, bench.context), generator=generator)
    tokens = tokens.to(setup.device)
    n_tokens = tokens.numel()
    if n_tokens < args.batch:
        raise SystemExit(f"a forward pass gives {n_tokens} tokens, fewer than one batch of {args.batch}")
    d_sae = args.pipeline_d_sae or args.d_sae[0]
    print(
        f"\n== pipeline: {bench.name} ({args.pipeline_dtype} weights, built in {built_s:.1f} s) to "
        f"{bench.hook}, {args.pipeline_prompts} x {bench.context} tokens per forward = "
        f"{n_tokens // args.batch} SAE batches of {args.batch}; d_sae {d_sae}; {args.pipeline_forwards} "
        f"timed forwards (+1 warm-up) per row =="
    )
    # The same tokens every forward, so thresholds set on one forward's batches hold for all.
    state = reference_state(d_sae, pipeline_batches(bench, tokens, args.batch), setup)
    print(
        f"{'method':<18} {'SAEs':>4} {'path':>6} {'L0':>6} {'fwd ms':>9} {'SAE ms':>9} {'fwd %':>6} "
        f"{'tokens/s/SAE':>13} {'tokens/s all':>13}"
    )
    for method in METHODS:
        for n_saes in (1, args.pipeline_ladder):
            trainers = [build_trainer(method, state, args.batch, setup, iter(())) for _ in range(n_saes)]
            r = time_pipeline(trainers, bench, tokens, args.batch, args.pipeline_forwards, setup.device)
            total = r.forward_s + r.sae_s
            print(
                f"{method.label:<18} {n_saes:>4} {r.path:>6} {r.l0:>6.1f} {r.forward_s * 1e3:>9.1f} {r.sae_s * 1e3:>9.1f} "
                f"{r.forward_s / total:>6.1%} {r.tokens_per_s_per_sae:>13.0f} "
                f"{n_saes * r.tokens_per_s_per_sae:>13.0f}",
                flush=True,
            )
            del trainers
            gc.collect()
            if torch.device(setup.device).type == "cuda":
                torch.cuda.empty_cache()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=default_device())
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="bf16 = autocast in both trainers"
    )
    parser.add_argument("--d-in", type=int, default=None, help="default 2304 (gemma-2-2b), quick 256")
    parser.add_argument("--d-sae", default=None, help="comma-separated; default 16384,65536, quick 4096")
    parser.add_argument("--batch", type=int, default=None, help="default 4096, quick 256")
    parser.add_argument("--l0", type=float, default=100.0, help="target L0 for every method")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20, quick 10)")
    parser.add_argument("--warm-up", type=int, default=3)
    parser.add_argument("--n-batches", type=int, default=4, help="fixed batches the steps cycle over")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU smoke run")
    # One thread by default: on a shared, busy CPU extra threads only thrash (30x slower here).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--pipeline", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA"
    )
    parser.add_argument(
        "--pipeline-model", choices=MODEL_CHOICES, default=None,
        help=f"default {GEMMA2_2B_RANDOM} on CUDA, {TINY} on CPU",
    )  # fmt: skip
    parser.add_argument("--pipeline-dtype", choices=("bf16", "fp32"), default=None, help="model weights")
    parser.add_argument(
        "--pipeline-prompts", type=int, default=None, help="prompts per forward (default 32; tiny 8)"
    )
    parser.add_argument("--pipeline-ladder", type=int, default=6, help="SAEs in the ladder row")
    parser.add_argument("--pipeline-forwards", type=int, default=3, help="timed forwards per row")
    parser.add_argument("--pipeline-d-sae", type=int, default=None, help="default: the first --d-sae")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    args.d_in = args.d_in or (256 if args.quick else 2304)
    args.d_sae = [int(v) for v in (args.d_sae or ("4096" if args.quick else "16384,65536")).split(",")]
    args.batch = args.batch or (256 if args.quick else 4096)
    args.steps = args.steps or (10 if args.quick else 20)
    args.pipeline = cuda if args.pipeline is None else args.pipeline
    args.pipeline_model = args.pipeline_model or (GEMMA2_2B_RANDOM if cuda else TINY)
    args.pipeline_dtype = args.pipeline_dtype or ("bf16" if cuda else "fp32")
    args.pipeline_prompts = args.pipeline_prompts or (8 if args.pipeline_model == TINY else 32)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    set_matmul_precision(args.precision)
    # Once per process from the sparse path's CSR tensors; it would split the table.
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    setup = Setup(device=args.device, precision=args.precision, l0=args.l0)
    print(f"device {describe_device(args.device)}, precision {args.precision}, torch {torch.__version__}")
    print(f"all methods: η {LR:g}, Adam β {BETAS}, λ {L0_COEFFICIENT:g}, ε {BANDWIDTH:g}; ratios vs (a)")
    run_steps(args, setup)
    if args.pipeline:
        run_pipeline(args, setup)


if __name__ == "__main__":
    main()
