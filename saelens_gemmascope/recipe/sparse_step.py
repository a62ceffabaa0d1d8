"""The sparse fast path of the ``jumprelu_gemmascope`` training step (pure PyTorch).

Once trained, about 100 of 16,384+ latents fire per input. Only the encoder's forward product
``(x - b_dec) @ W_enc`` needs every latent; everything else touches only the *entries* (row, latent)
that are active (``pre > θ``) or inside the estimators' window (``|pre - θ| < ε/2``, where θ gets a
gradient). With ``u = (pre - θ)/ε`` as :func:`~saelens_gemmascope.recipe.estimators.rectangle_kernel`
computes it, active-or-window is exactly ``u > -1/2``.

:class:`SparseJumpReLUStep` takes those entries as COO and computes, with the recipe's estimators:

* forward: the decoder product ``acts @ W_dec`` as an ``embedding_bag`` over each row's active
  latents, and each row's L0 (the count of active latents);
* backward: ``∂L/∂acts`` only at the entries (a sampled dense-dense product, ``sampled_addmm``);
  from it the gradients of θ (both estimators), ``b_enc``, the pre-encoder bias ``b_dec``
  (``-W_enc @ ∂L/∂b_enc``: the batch sum is all it needs), and ``W_dec``/``W_enc`` as
  ``embedding_bag`` sums over each latent's entries.

Everything is the dense path's arithmetic restricted to the entries where it is non-zero, so the
two agree up to floating-point summation order. :func:`prefers_sparse` is the ``"auto"`` rule.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: ``"auto"`` takes the sparse path while the fraction of active-or-window entries in the batch is
#: at most this, per device type; device types not listed always take the dense path. CPU:
#: measured (2-core AMD EPYC, AVX-512, MKL, fused Adam; d_in 2304, d_sae 16,384, batch 512,
#: ``benchmarks/bench_step.py --l0 …``): sparse 1.7x faster than dense at 2.4% density, 1.2x at
#: 7.3%, even at 10%, 2x slower at 20%; the cut-off sits a little below the cross-over.
#: CUDA is deliberately absent: the sparse kernels have not run on a GPU yet (their tests are
#: marked ``gpu``), so "auto" stays on the dense reference there until ``benchmarks/bench_step.py``
#: has measured the cross-over on one; ``fast_path="sparse"`` opts in meanwhile.
SPARSE_DENSITY_CUTOFF: dict[str, float] = {"cpu": 0.08}

#: Parameter dtypes the sparse kernels support on every device (``sampled_addmm`` has no bf16 on CPU).
SPARSE_DTYPES = (torch.float32, torch.float64)


def prefers_sparse(density: float, device: torch.device) -> bool:
    """The ``"auto"`` rule: sparse while the active-or-window density is at most the device's cut-off."""
    cutoff = SPARSE_DENSITY_CUTOFF.get(device.type)
    return cutoff is not None and density <= cutoff


def candidate_mask(hidden_pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """A cheap superset of the active-or-window entries: ``pre > θ - ε`` (one comparison).

    The exact set is ``pre > θ - ε/2`` up to rounding; the extra half-bandwidth, plus a few ulps of
    θ for very large thresholds, makes sure rounding never drops an entry. :func:`select_entries`
    keeps the exact ones.
    """
    slack = bandwidth + 4 * torch.finfo(threshold.dtype).eps * threshold.abs()
    return hidden_pre > (threshold - slack)


@dataclass(frozen=True)
class StepEntries:
    """The batch's active-or-window entries as COO, sorted by row then latent.

    Attributes:
        rows, latents: int64 coordinates.
        pre: the pre-activations there.
        active: ``pre > θ`` (the JumpReLU's ``H``).
        window: the rectangle kernel ``K((pre - θ)/ε)``, as the dense estimators compute it.
        n_rows, d_sae: the dense shape.
    """

    rows: torch.Tensor
    latents: torch.Tensor
    pre: torch.Tensor
    active: torch.Tensor
    window: torch.Tensor
    n_rows: int
    d_sae: int

    @property
    def count(self) -> int:
        return int(self.rows.numel())

    def row_counts(self) -> torch.Tensor:
        return torch.bincount(self.rows, minlength=self.n_rows)

    def feature_acts(self) -> torch.Tensor:
        """The dense JumpReLU output (zeros off the active entries), as the trainer records it."""
        acts = torch.zeros((self.n_rows, self.d_sae), dtype=self.pre.dtype, device=self.pre.device)
        keep = self.active
        return acts.index_put_((self.rows[keep], self.latents[keep]), self.pre[keep])


def select_entries(
    hidden_pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float, candidates: torch.Tensor
) -> StepEntries:
    """The exact active-or-window entries of a 2-D ``hidden_pre`` among ``candidates``."""
    rows, latents = candidates.nonzero().unbind(1)
    pre = hidden_pre[rows, latents]
    theta = threshold[latents]
    # The same expressions as the dense estimators, on the same values: the same booleans.
    u = (pre - theta) / bandwidth
    active = pre > theta
    window = (u > -0.5) & (u < 0.5)
    keep = active | window
    n_rows, d_sae = hidden_pre.shape
    return StepEntries(
        rows=rows[keep], latents=latents[keep], pre=pre[keep], active=active[keep],
        window=window[keep], n_rows=n_rows, d_sae=d_sae,
    )  # fmt: skip


def _exclusive_cumsum(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def _sampled_row_dots(
    entries: StepEntries, grad_out: torch.Tensor, W_dec: torch.Tensor, row_counts: torch.Tensor
) -> torch.Tensor:
    """``(grad_out @ W_decᵀ)[row, latent]`` at the entries only (SDDMM), without a dense product."""
    crow = torch.zeros(entries.n_rows + 1, dtype=torch.int64, device=row_counts.device)
    crow[1:] = torch.cumsum(row_counts, 0)
    values = torch.zeros(entries.count, dtype=grad_out.dtype, device=grad_out.device)
    with warnings.catch_warnings():
        # A once-per-process notice that CSR tensors are "beta"; the two ops used here are stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            crow, entries.latents, values, (entries.n_rows, entries.d_sae), check_invariants=False
        )
    return torch.sparse.sampled_addmm(pattern, grad_out, W_dec.T, beta=0.0).values()


def _per_latent_row_sums(
    rows_by_latent: torch.Tensor,
    latent_offsets: torch.Tensor,
    dense_rows: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """``out[j] = Σ_{entries (b, j)} weight · dense_rows[b]``: a ``(d_sae, d)`` matrix, zero where unused."""
    return F.embedding_bag(
        rows_by_latent,
        dense_rows,
        latent_offsets,
        mode="sum",
        per_sample_weights=weights.to(dense_rows.dtype),
    )


class SparseJumpReLUStep(torch.autograd.Function):
    """Decoder product and per-row L0 of a JumpReLU SAE from its active-or-window entries.

    Inputs: ``sae_in`` (the encoder's input, no gradient), ``W_enc``, ``b_enc``, ``W_dec``, θ,
    ``pre_encoder_bias`` (``b_dec`` when it is subtracted before the encoder, else ``None``), the
    :class:`StepEntries` of ``hidden_pre = sae_in @ W_enc + b_enc`` and ε. Outputs ``acts @ W_dec``
    (without ``b_dec``) and each row's L0; gradients follow the recipe's estimators.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        sae_in: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        threshold: torch.Tensor,
        pre_encoder_bias: torch.Tensor | None,
        entries: StepEntries,
        bandwidth: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The kernels run in the parameters' dtype: under autocast only the dense encoder product
        # (done by the caller) uses the lower precision; these sums are small next to it.
        with torch.autocast(device_type=sae_in.device.type, enabled=False):
            row_counts = entries.row_counts()
            acts = entries.pre * entries.active.to(entries.pre.dtype)  # pre · H(pre - θ)
            decoded = F.embedding_bag(
                entries.latents, W_dec, _exclusive_cumsum(row_counts), mode="sum",
                per_sample_weights=acts.to(W_dec.dtype),
            )  # fmt: skip
            l0 = torch.bincount(entries.rows[entries.active], minlength=entries.n_rows).to(entries.pre.dtype)
        ctx.save_for_backward(sae_in, W_enc, W_dec, threshold)
        ctx.entries, ctx.acts, ctx.row_counts, ctx.bandwidth = entries, acts, row_counts, bandwidth
        ctx.has_pre_encoder_bias = pre_encoder_bias is not None
        ctx.b_enc_dtype = b_enc.dtype
        ctx.set_materialize_grads(False)
        return decoded, l0

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_decoded: torch.Tensor | None, grad_l0: torch.Tensor | None
    ) -> tuple[Any, ...]:
        sae_in, W_enc, W_dec, threshold = ctx.saved_tensors
        entries: StepEntries = ctx.entries
        eps: float = ctx.bandwidth
        _, needs_W_enc, needs_b_enc, needs_W_dec, needs_threshold, needs_bias, _, _ = ctx.needs_input_grad
        dtype = entries.pre.dtype
        if grad_decoded is None:
            grad_decoded = torch.zeros(
                (entries.n_rows, W_dec.shape[1]), dtype=W_dec.dtype, device=W_dec.device
            )
        grad_decoded = grad_decoded.contiguous()
        grad_acts = _sampled_row_dots(entries, grad_decoded, W_dec, ctx.row_counts).to(dtype)
        # ∂JumpReLU/∂pre = H(pre - θ): the active entries only (the window's own entries get none).
        grad_pre = entries.active.to(dtype) * grad_acts

        grad_threshold = None
        if needs_threshold:
            window = entries.window.to(dtype)
            theta = threshold[entries.latents]
            per_entry = -(theta / eps) * window * grad_acts  # JumpReLU: -(θ/ε)·K
            if grad_l0 is not None:
                per_entry = per_entry + -(1.0 / eps) * window * grad_l0[entries.rows]  # step: -(1/ε)·K
            grad_threshold = torch.zeros_like(threshold).index_add_(
                0, entries.latents, per_entry.to(threshold.dtype)
            )

        grad_b_enc_full = None
        if needs_b_enc or needs_bias:
            grad_b_enc_full = torch.zeros(entries.d_sae, dtype=dtype, device=grad_pre.device)
            grad_b_enc_full.index_add_(0, entries.latents, grad_pre)

        grad_W_enc = grad_W_dec = None
        if needs_W_enc or needs_W_dec:
            # Group the entries by latent so that each latent's gradient row is one bag.
            order = torch.argsort(entries.latents, stable=True)
            rows_by_latent = entries.rows[order]
            latent_offsets = _exclusive_cumsum(torch.bincount(entries.latents, minlength=entries.d_sae))
            if needs_W_dec:
                grad_W_dec = _per_latent_row_sums(
                    rows_by_latent, latent_offsets, grad_decoded, ctx.acts[order]
                )
            if needs_W_enc:
                # W_encᵀ's rows are the latents; the transposing copy is what W_enc's layout costs.
                grad_W_enc_t = _per_latent_row_sums(rows_by_latent, latent_offsets, sae_in, grad_pre[order])
                grad_W_enc = grad_W_enc_t.T.contiguous().to(W_enc.dtype)

        grad_bias = None
        if needs_bias and ctx.has_pre_encoder_bias:
            # pre = (x - b_dec) @ W_enc + b_enc, so ∂L/∂b_dec = -W_enc @ Σ_rows ∂L/∂pre = -W_enc @ ∂L/∂b_enc.
            assert grad_b_enc_full is not None
            grad_bias = -(W_enc @ grad_b_enc_full.to(W_enc.dtype))
        grad_b_enc = (
            grad_b_enc_full.to(ctx.b_enc_dtype) if grad_b_enc_full is not None and needs_b_enc else None
        )
        return None, grad_W_enc, grad_b_enc, grad_W_dec, grad_threshold, grad_bias, None, None
