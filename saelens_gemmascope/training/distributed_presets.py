"""``gemmascope train --distributed {data,sae}`` under torchrun: presets through the distributed driver.

Each preset's own runner config (recipe defaults, preset overrides, ``--set`` values) supplies the
trainer settings and the global batch, which is split across ranks: in ``data`` mode every rank steps
on its share with gradients averaged; in ``sae`` mode the shares are all-gathered back into the global
batch and the λ ladder's SAEs are spread over the ranks. The λs are given (no calibration round).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saelens_gemmascope.training.preset import TrainingPreset


def train_presets_distributed(
    presets: Sequence[TrainingPreset],
    mode: str,
    l0_coefficients: Sequence[float],
    output: str | Path,
    *,
    data: str = "stdlib",
    overrides: Mapping[str, Any] | None = None,
    n_checkpoints: int = 0,
    resume: bool = False,
    timeout_s: float = 300,
) -> list[Path]:
    """Train every preset's λ ladder with this process as one rank of a torchrun job.

    Returns the folders this rank saved SAEs in (``<output>/saes/<preset>/<λ name>``).
    """
    import torch.distributed as dist

    from saelens_gemmascope.models.loading import load_language_model
    from saelens_gemmascope.training.data import load_training_data
    from saelens_gemmascope.training.distributed import init_distributed, log_main, train_distributed
    from saelens_gemmascope.training.preset_config import training_config

    for preset in presets:
        preset.require_trainable()
    ctx = init_distributed(timeout_s)
    models: dict[str, Any] = {}
    saved: list[Path] = []
    try:
        for preset in presets:
            runner = training_config([preset], list(l0_coefficients), **dict(overrides or {}))
            global_batch = runner.train_batch_size_tokens
            if global_batch % ctx.world_size:
                raise ValueError(
                    f"the batch of {global_batch} activations does not split over {ctx.world_size} ranks"
                )
            steps = runner.training_tokens // global_batch
            if preset.model_name not in models:
                models[preset.model_name] = load_language_model(preset.model_name, device=str(ctx.device))
            model = models[preset.model_name]
            tokenizer = model.tokenizer
            specials = [
                i
                for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                if i is not None
            ]
            log_main(ctx, "%s: %d SAEs, %d steps of %d activations on %d rank(s), mode %s",
                     preset.name, len(runner.saes), steps, global_batch, ctx.world_size, mode)  # fmt: skip
            out = Path(output) / "saes" / preset.name
            # The runner names SAEs "<preset>/l0_coef_<λ>"; the preset is already in the folder path.
            ladder = {name.rsplit("/", 1)[-1]: cfg for name, cfg in runner.saes.items()}
            saes = train_distributed(
                mode, model, load_training_data(data, tokenizer, runner.context_size), preset.hook_name,
                ladder, runner.to_sae_trainer_config(), steps, global_batch // ctx.world_size, specials,
                ctx, output_dir=out, checkpoint_every=steps // n_checkpoints if n_checkpoints else 0,
                resume=resume,
            )  # fmt: skip
            saved += [out / name for name in saes if (out / name).is_dir()]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return saved
