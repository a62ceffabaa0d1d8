"""Two Gloo processes on CPU: data parallel and SAE-sharded training equal one process on the
global batch; a dead rank ends the survivor's collective with an error; per-rank checkpoints resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from dist_workers import LADDER, equivalence_worker, failing_rank_worker, free_port

from saelens_gemmascope.data import stdlib_token_dataset
from saelens_gemmascope.models.tiny import build_tiny_gemma2
from saelens_gemmascope.models.tokenizer import BOS_ID, EOS_ID, PAD_ID
from saelens_gemmascope.training.distributed import (
    DistContext,
    owned_names,
    shard_activations,
    shard_rows,
    stop_layer_of,
)

WORLD = 2
# Float32 reductions in another order (two half-batch means averaged vs one global mean) differ
# by rounding only; after 8 Adam steps the largest observed gap is far below this.
ATOL = 1e-5


@pytest.fixture(scope="module")
def equivalence_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(equivalence_worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def load(out: Path, name: str, rank: int) -> dict[str, Any]:
    return torch.load(out / f"{name}_rank{rank}.pt", weights_only=False)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_data_parallel_equals_one_process_on_the_global_batch(equivalence_results: Path) -> None:
    rank0, rank1 = (load(equivalence_results, "data_parallel", r) for r in range(WORLD))
    assert rank0["scale"] == pytest.approx(rank0["reference_scale"], rel=1e-12)
    assert rank1["scale"] == rank0["scale"]
    # Same weights on every rank, equal to the single-process run, and they did move.
    assert max_diff(rank0["params"], rank1["params"]) == 0.0
    assert max_diff(rank0["params"], rank0["reference"]) < ATOL
    assert max_diff(rank0["params"], rank0["initial"]) > 1e-3
    norms = rank0["params"]["W_dec"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_sae_sharded_equals_training_each_sae_alone(equivalence_results: Path) -> None:
    rank0, rank1 = (load(equivalence_results, "sae_sharded", r) for r in range(WORLD))
    assert (rank0["owned"], rank1["owned"]) == (["a", "c"], ["b"])
    for name in LADDER:
        assert max_diff(rank0["params"][name], rank1["params"][name]) == 0.0
        assert max_diff(rank0["params"][name], rank0["reference"][name]) < ATOL
    # The ladder's λ differ, so the SAEs must too: each really came from its own owner.
    assert max_diff(rank0["params"]["a"], rank0["params"]["c"]) > 1e-4


def test_per_rank_checkpoint_resumes_exactly(equivalence_results: Path) -> None:
    for rank in range(WORLD):
        result = load(equivalence_results, "checkpoint", rank)
        assert result["step"] == 4
        assert result["files"] == ["rank0.pt", "rank1.pt"]
        assert result["n_training_steps"] == (8, 8)
        assert result["scaling_factor"] == (1 / 7.0, 1 / 7.0)
        assert max_diff(result["continuous"], result["resumed"]) == 0.0


@pytest.mark.parametrize("failure", ["exit", "hang"])
def test_failed_rank_turns_the_collective_into_an_error(tmp_path: Path, failure: str) -> None:
    # A dead peer closes its sockets (Gloo fails at once); a hung one leaves only the timeout.
    timeout_s, bound_s = 5.0, 90.0
    context = mp.get_context("spawn")
    port = free_port()
    # Separate processes, not mp.spawn: spawn would kill the survivor itself once rank 1 fails.
    procs = [
        context.Process(
            target=failing_rank_worker, args=(rank, WORLD, port, str(tmp_path), timeout_s, failure)
        )
        for rank in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    procs[0].join(timeout=bound_s)
    survivor_blocked = procs[0].is_alive()
    for proc in procs:
        if proc.is_alive():  # the hung rank 1, or a blocked rank 0
            proc.kill()
        proc.join()
    assert not survivor_blocked, f"the surviving rank was still blocked after {bound_s} s"
    if failure == "exit":
        assert procs[1].exitcode == 1
    assert procs[0].exitcode == 3, (tmp_path / "error.txt").read_text()
    assert (tmp_path / "error.txt").read_text() != "no error"


def test_shards_and_owners() -> None:
    ranks = [DistContext(r, 3, r, torch.device("cpu"), "gloo") for r in range(3)]
    shards = [shard_rows(10, ctx) for ctx in ranks]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert [owned_names(["c", "a", "d", "b"], ctx) for ctx in ranks] == [["a", "d"], ["b"], ["c"]]
    assert stop_layer_of("blocks.1.hook_resid_post") == 2
    assert stop_layer_of("hook_embed") is None


def test_shard_activations_cover_the_ranks_rows_without_special_tokens() -> None:
    tiny = build_tiny_gemma2(seed=0)
    hook, context = "blocks.0.hook_resid_post", 16
    dataset = stdlib_token_dataset(tiny.tokenizer, context_size=context, n_sequences=6)
    specials = (BOS_ID, EOS_ID, PAD_ID)
    for rank in range(WORLD):
        ctx = DistContext(rank, WORLD, rank, torch.device("cpu"), "gloo")
        stream = shard_activations(tiny.tl_model, dataset, hook, ctx, batch_size=15, special_ids=specials)
        got = torch.cat([next(stream) for _ in range(3)])  # 45 = all 3 rows x 15 non-BOS positions
        tokens = torch.tensor(dataset[rank::WORLD]["input_ids"])
        _, cache = tiny.tl_model.run_with_cache(tokens, names_filter=[hook])
        expected = cache[hook][:, 1:].reshape(-1, cache[hook].shape[-1])  # position 0 is BOS
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["data", "sae"])
def test_train_distributed_in_one_process_saves_loadable_saes(tmp_path: Path, mode: str) -> None:
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig

    from saelens_gemmascope.training.config import gemmascope_sae_config
    from saelens_gemmascope.training.distributed import train_distributed

    tiny = build_tiny_gemma2(seed=0)
    dataset = stdlib_token_dataset(tiny.tokenizer, context_size=32, n_sequences=8)
    ctx = DistContext(0, 1, 0, torch.device("cpu"), "gloo")  # no group: the world-size-1 path
    cfgs = {"a": gemmascope_sae_config(64, 128, 1e-3), "b": gemmascope_sae_config(64, 128, 1e-2)}
    cfg = SAETrainerConfig(total_training_samples=0, train_batch_size_samples=0, lr_end=7e-6,
                           lr_warm_up_steps=2, adam_beta1=0.0, n_batches_for_norm_estimate=2)  # fmt: skip
    saes = train_distributed(
        mode, tiny.tl_model, dataset, "blocks.1.hook_resid_post", cfgs, cfg, 3, 62, (BOS_ID, EOS_ID, PAD_ID),
        ctx, output_dir=tmp_path,
    )  # fmt: skip
    assert sorted(saes) == ["a", "b"]
    for name in saes:
        loaded = SAE.load_from_disk(str(tmp_path / name))
        assert loaded.cfg.architecture() == "jumprelu"


def test_interrupted_train_distributed_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sae_lens.config import SAETrainerConfig

    from saelens_gemmascope.training import distributed
    from saelens_gemmascope.training.config import gemmascope_sae_config

    tiny = build_tiny_gemma2(seed=0)
    dataset = stdlib_token_dataset(tiny.tokenizer, context_size=32, n_sequences=8)
    ctx = DistContext(0, 1, 0, torch.device("cpu"), "gloo")
    cfgs = {"a": gemmascope_sae_config(64, 128, 1e-3)}
    cfg = SAETrainerConfig(total_training_samples=0, train_batch_size_samples=0, lr_end=7e-6,
                           lr_warm_up_steps=2, adam_beta1=0.0, n_batches_for_norm_estimate=2)  # fmt: skip
    hook, specials = "blocks.1.hook_resid_post", (BOS_ID, EOS_ID, PAD_ID)

    def run(output: Path, **kwargs: object) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        saes = distributed.train_distributed(
            "data", tiny.tl_model, dataset, hook, cfgs, cfg, 6, 62, specials, ctx, output_dir=output, **kwargs
        )  # fmt: skip
        return {k: v.detach().clone() for k, v in saes["a"].state_dict().items()}

    uninterrupted = run(tmp_path / "whole")

    real_stream = distributed.shard_activations

    def failing_stream(*args: object, **kwargs: object):  # dies after the estimate batches + 4 steps
        for i, batch in enumerate(real_stream(*args, **kwargs)):
            if i == 2 + 4:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(distributed, "shard_activations", failing_stream)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", checkpoint_every=2)
    assert (tmp_path / "cut" / "checkpoints" / "rank0.pt").is_file()
    monkeypatch.setattr(distributed, "shard_activations", real_stream)
    resumed = run(tmp_path / "cut", checkpoint_every=2, resume=True)
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["sae", "data"])
def test_gemmascope_train_under_torchrun_picks_the_mode_from_a_flag(tmp_path: Path, mode: str) -> None:
    import os
    import shutil
    import subprocess
    import sys

    from sae_lens import SAE

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    command = [
        torchrun, "--standalone", "--nproc-per-node", "2", "-m", "saelens_gemmascope.cli", "train",
        "tiny-gemma-2/res/layer_1/width_256", "--distributed", mode, "--calibration-grid", "1e-3,1e-2",
        "--set", "training_tokens=5120", "--checkpoints", "2", "--output", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "saes" / "tiny-gemma-2" / "res" / "layer_1" / "width_256"
    assert sorted(p.name for p in folder.glob("l0_coef_*")) == ["l0_coef_0.001", "l0_coef_0.01"]
    assert sorted(p.name for p in (folder / "checkpoints").glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
    for name in ("l0_coef_0.001", "l0_coef_0.01"):
        sae = SAE.load_from_disk(str(folder / name))
        assert sae.cfg.architecture() == "jumprelu" and sae.cfg.d_sae == 256
