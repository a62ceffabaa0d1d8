"""Where an SAE reads and writes in a HookedSAETransformer, and the spliced forward pass from there
(shared by the evaluation and the end-to-end KL finetuning).

The spliced pass does not re-run the model from the embedding. The clean pass caches the residual
stream entering the SAE's block (``blocks.{L}.hook_resid_pre``); the spliced pass starts there with
TransformerLens's ``start_at_layer=L`` and a hook that swaps in the precomputed reconstruction at the
write hook. Upstream of block L nothing differs from the clean pass, so this is exact, and each extra
SAE at layer L costs ``n_layers - L`` blocks plus the unembedding instead of a whole forward pass.
Only the embedding site, which lies before every block, re-runs the full model.

* SAE at ``res``/``mlp``/``embedding``: reads and writes the same hook.
* SAE at ``att``: reads and writes ``attn.hook_z`` (``(batch, pos, head, d_head)``), flattened to
  ``n_heads * d_head`` for the SAE unless it is in SAELens's ``hook_z`` reshaping mode.
* transcoder (``cfg.metadata.hook_name_out`` set): reads ``ln2.hook_normalized`` and writes its
  output over ``hook_mlp_out``, the MLP output it replaces.

The sites are those of the model's registered spec (:func:`~saelens_gemmascope.models.attach.model_spec_of`),
so a plugin's model is evaluated at its own sites; the names above are Gemma 2's.

:func:`spliced_logits` keeps the autograd graph (the KL finetuning trains through it); callers that
only measure run it under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from saelens_gemmascope.models.attach import model_spec_of, reads_heads
from saelens_gemmascope.models.spec import HookPoint, ModelSpec


@dataclass(frozen=True)
class SplicePlan:
    """How one SAE is spliced into a model."""

    site: str  # a site of the model's spec (Gemma 2: res, mlp, att, embedding, transcoder)
    layer: int | None
    read_hook: str
    write_hook: str
    #: the block the spliced pass starts at (from its cached ``hook_resid_pre``); None: from the tokens
    start_layer: int | None
    #: the write hook holds ``(batch, pos, head, d_head)``
    split_heads: bool

    @property
    def hook_name_out(self) -> str | None:
        """Where the SAE writes when that is not where it reads (a transcoder), else None."""
        return self.write_hook if self.write_hook != self.read_hook else None

    @property
    def start_hook(self) -> str | None:
        return None if self.start_layer is None else f"blocks.{self.start_layer}.hook_resid_pre"

    @property
    def cache_hooks(self) -> frozenset[str]:
        """The clean pass's activations this plan needs."""
        hooks = {self.read_hook, self.write_hook}
        if self.start_hook is not None:
            hooks.add(self.start_hook)
        return frozenset(hooks)


def _hook_points(spec: ModelSpec) -> list[HookPoint]:
    """Every site of ``spec`` at every layer."""
    points = []
    for name, site in spec.sites.items():
        layers: list[int | None] = list(range(spec.n_layers)) if site.layered else [None]
        points += [spec.hook_point(name, layer) for layer in layers]
    return points


def _start_layer(hp: HookPoint) -> int | None:
    # The spliced pass may start at block L only when the write hook lies inside block L (after the
    # hook_resid_pre it starts from); a site elsewhere (the embedding) re-runs the whole model.
    if hp.layer is not None and hp.tl_hook.startswith(f"blocks.{hp.layer}."):
        return hp.layer
    return None


def plan_splice(model: Any, sae: Any) -> SplicePlan:
    """Locate ``sae`` (by ``cfg.metadata.hook_name`` / ``hook_name_out``) among ``model``'s sites."""
    spec = model_spec_of(model)
    meta = sae.cfg.metadata
    hook_in, hook_out = meta.hook_name, meta.hook_name_out
    if hook_in is None:
        raise ValueError("the SAE's cfg.metadata.hook_name is unset: cannot tell where it reads")
    if meta.hook_head_index is not None:
        raise ValueError(f"single-head SAEs (hook_head_index={meta.hook_head_index}) are not supported")
    points = [hp for hp in _hook_points(spec) if hp.tl_hook == hook_in]
    if hook_out is None:
        # A plain SAE reads and writes one site; a transcoder's input site is not one.
        matches = [hp for hp in points if hp.output is None]
        if not matches:
            raise ValueError(f"{hook_in!r} is not a site of {spec.name!r} (sites: {', '.join(spec.sites)})")
        read, write = matches[0], hook_in
    else:
        matches = [hp for hp in points if hp.output is not None and hp.output.tl_hook == hook_out]
        if not matches:
            raise ValueError(
                f"a transcoder must read and write the transcoder site of one layer; got "
                f"{hook_in!r} -> {hook_out!r}"
            )
        read, write = matches[0], hook_out
    if sae.cfg.d_in != read.d_in:
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in} but {hook_in!r} has width {read.d_in}")
    return SplicePlan(
        site=read.site,
        layer=read.layer,
        read_hook=hook_in,
        write_hook=write,
        start_layer=_start_layer(read),
        split_heads=reads_heads(read),
    )


@torch.no_grad()
def encode_decode(sae: Any, plan: SplicePlan, read_act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(feature_acts (batch, pos, d_sae), reconstruction (batch, pos, d_out))``, heads flattened."""
    sae_in = read_act
    if plan.split_heads and not getattr(sae, "hook_z_reshaping_mode", False):
        sae_in = read_act.flatten(-2)
    sae_in = sae_in.to(sae.device, sae.dtype)
    feature_acts = sae.encode(sae_in)
    reconstruction = sae.decode(feature_acts)
    # SAELens's decode is W_dec f + b_dec only; a skip transcoder's output also has its skip term.
    w_skip = getattr(sae, "W_skip", None)
    if w_skip is not None:
        reconstruction = reconstruction + sae_in @ w_skip.T
    if plan.split_heads and reconstruction.ndim == 4:
        reconstruction = reconstruction.flatten(-2)
    return feature_acts, reconstruction


def flat_site_tensor(plan: SplicePlan, act: torch.Tensor) -> torch.Tensor:
    """A cached write-hook tensor as ``(batch, pos, d)``."""
    return act.flatten(-2) if plan.split_heads else act


def spliced_logits(
    model: Any,
    plan: SplicePlan,
    tokens: torch.Tensor,
    clean_cache: Mapping[str, torch.Tensor],
    reconstruction: torch.Tensor,
    act_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits with ``reconstruction`` written over the plan's write hook where ``act_mask`` holds.

    Elsewhere (BOS, EOS, padding) the clean activation stays, as in SAELens's own evals.
    """
    keep = act_mask[:, :, None, None] if plan.split_heads else act_mask[:, :, None]

    def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
        new = reconstruction.to(act.device, act.dtype)
        if plan.split_heads:
            new = new.unflatten(-1, act.shape[-2:])
        return torch.where(keep.to(act.device), new, act)

    with model.hooks(fwd_hooks=[(plan.write_hook, replace)]):
        if plan.start_hook is None:
            return model(tokens, return_type="logits")  # type: ignore[no-any-return]
        return model(  # type: ignore[no-any-return]
            clean_cache[plan.start_hook], start_at_layer=plan.start_layer, return_type="logits"
        )
