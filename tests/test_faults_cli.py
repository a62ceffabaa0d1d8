"""Bad input to every command is one error line, a hint line and exit status 2, with nothing written.

Each row of the table injects one bad value (an option, a dataset, a manifest) and runs
``saelens_gemmascope.cli.main`` in this process; the row passes when stderr is exactly the error line
(containing the row's fragment) and the hint, and the command's output folder was not created. Also
here: a broken third-party plugin (one line, every command, `ls` included), interrupts (exit 128 +
the signal), and calibration input (item 10 of issue 14).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets
import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from saelens_gemmascope.cli import TRACEBACK_HINT, main
from saelens_gemmascope.directory.layout import export_gemmascope_sae
from saelens_gemmascope.host import DISABLE_ENV_VAR
from saelens_gemmascope.suite.calibration import (
    CalibrationError,
    CalibrationRecord,
    calibrate,
    read_record,
    record_path,
    write_record,
)
from saelens_gemmascope.suite.configs import PresetSAE, match_presets
from saelens_gemmascope.suite.preset import TrainingPreset

TINY = "tiny-gemma-2/res/layer_1/width_256"
HOOK = "blocks.1.hook_resid_post"
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder of the tiny model, good and bad datasets, and broken manifests."""
    root = tmp_path_factory.mktemp("inputs")
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=96))
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = HOOK, "tiny-gemma-2"
    export_gemmascope_sae(sae, root / "export", average_l0=10.0)
    ids = {
        "ok": [[2, 5, 6, 7]] * 4,
        "ids-too-big": [[2, 5, 999_999, 7]] * 4,
        "ids-negative": [[2, -3, 6, 7]] * 4,
    }
    for name, rows in ids.items():
        datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(root / name))
    datasets.Dataset.from_dict({"input_ids": []}).save_to_disk(str(root / "no-rows"))
    datasets.Dataset.from_dict({"foo": [1, 2]}).save_to_disk(str(root / "no-token-column"))
    (root / "empty-folder").mkdir()
    (root / "bad-json").mkdir()
    (root / "bad-json" / "release.json").write_text(
        '{"format": "saelens-gemmascope/local-release", "saes": ['
    )
    escaping = json.loads((root / "export" / "release.json").read_text())
    escaping["saes"][0]["path"] = "../outside"
    (root / "escaping").mkdir()
    (root / "escaping" / "release.json").write_text(json.dumps(escaping))
    return root


def _train(*options: str) -> list[str]:
    return ["train", TINY, *options]


def _eval(*options: str, source: str = "{inputs}/export") -> list[str]:
    return ["eval", source, "--model", "tiny-gemma-2", "--device", "cpu", "--n-sequences", "2", *options]


# (case id, argv with an {inputs} placeholder, a fragment of the error line)
CASES: list[tuple[str, list[str], str]] = [
    # train: settings, counts, sizes, devices, λs, data
    ("set-unknown", _train("--set", "foo=1"), "unknown setting 'foo'"),
    ("set-context-0", _train("--set", "context_size=0"), "context_size=0"),
    ("training-shorter-than-a-batch", _train("--set", "training_tokens=1"), "less than one batch"),
    ("checkpoints-negative", _train("--checkpoints", "-1"), "--checkpoints must be 0 or more"),
    ("checkpoints-not-int", _train("--checkpoints", "x"), "invalid int value: 'x'"),
    ("checkpoint-every-inf", _train("--checkpoint-every", "inf"), "finite number"),
    ("checkpoint-every-1e999", _train("--checkpoint-every", "1e999"), "finite number"),
    ("checkpoint-every-0", _train("--checkpoint-every", "0"), "must be positive"),
    ("memory-budget-1e999", _train("--memory-budget", "1e999"), "finite size"),
    ("memory-budget-inf-gib", _train("--memory-budget", "infGiB"), "finite size"),
    ("memory-budget-0", _train("--memory-budget", "0"), "must be positive"),
    ("memory-budget-too-small", _train("--memory-budget", "10"), "more than the budget of 10 B"),
    ("memory-budget-garbage", _train("--memory-budget", "lots"), "cannot read a memory size"),
    ("device-unknown", _train("--device", "gpu0"), "not a torch device"),
    ("dtype-unknown", _train("--dtype", "int8"), "dtype='int8'"),
    ("calibration-grid-nan-inf", _train("--calibration-grid", "nan,inf"), "positive finite numbers"),
    ("calibration-grid-zero", _train("--calibration-grid", "0,1e-3"), "positive finite numbers"),
    ("l0-coefficients-negative", _train("--l0-coefficients=-1e-3"), "positive finite numbers"),
    ("refine-rounds-negative", _train("--refine-rounds", "-1"), "--refine-rounds must be 0 or more"),
    ("wandb-empty", _train("--wandb", ""), "--wandb takes a project name"),
    ("data-missing", _train("--data", "{inputs}/nowhere"), "no such folder"),
    ("data-empty-folder", _train("--data", "{inputs}/empty-folder"), "not a dataset saved with save_to_disk"),
    ("data-no-rows", _train("--data", "{inputs}/no-rows"), "no rows"),
    ("data-no-token-column", _train("--data", "{inputs}/no-token-column"), "no input_ids, tokens or text"),
    ("output-is-a-file", _train("--output", "{inputs}/export/release.json"), "release.json is a file"),
    ("preset-unknown", ["train", "tiny-gemma-2/res/layer_1/width_25"], "Unknown preset"),
    ("model-offline", ["train", "gemma-2-2b/res/layer_12/width_16k"], "cannot load model 'gemma-2-2b'"),
    # eval: sizes, devices, tokens the model does not have, datasets, manifests
    ("eval-n-sequences-0", _eval("--n-sequences", "0"), "--n-sequences must be at least 1"),
    ("eval-context-1", _eval("--context-size", "1"), "--context-size must be at least 2"),
    ("eval-batch-0", _eval("--batch-size", "0"), "--batch-size must be at least 1"),
    ("eval-dtype", _eval("--dtype", "int8"), "--dtype 'int8'"),
    ("eval-device-unknown", _eval("--device", "gpu0"), "not a torch device"),
    (
        "eval-context-beyond-model",
        _eval("--context-size", "4000", "--dataset", "{inputs}/ok"),
        "context of 256",
    ),
    (
        "eval-ids-too-big",
        _eval("--context-size", "8", "--dataset", "{inputs}/ids-too-big"),
        "token id 999999",
    ),
    ("eval-ids-negative", _eval("--context-size", "8", "--dataset", "{inputs}/ids-negative"), "token id -3"),
    ("eval-dataset-empty-folder", _eval("--dataset", "{inputs}/empty-folder"), "not a dataset saved"),
    ("eval-dataset-no-rows", _eval("--dataset", "{inputs}/no-rows"), "no rows"),
    ("eval-dataset-missing", _eval("--dataset", "{inputs}/nowhere"), "no such dataset folder"),
    ("eval-dataset-too-few-rows", _eval("--n-sequences", "9", "--dataset", "{inputs}/ok"), "has 4 rows"),
    (
        "eval-release-json-not-json",
        _eval(source="{inputs}/bad-json"),
        "bad-json/release.json: not valid JSON",
    ),
    ("eval-release-json-escapes", _eval(source="{inputs}/escaping"), "field 'path': '../outside'"),
    ("eval-model-unknown", _eval("--model", "gemma-2-2bb"), "Did you mean: gemma-2-2b"),
    ("eval-out-under-a-file", _eval("--out", "{inputs}/export/release.json/x"), "release.json is a file"),
    ("eval-unknown-id", ["eval", "{inputs}/export", "layer_9/x"], "has no SAE 'layer_9/x'"),
    ("eval-release-without-ids", ["eval", "gemma-scope-2b-pt-res"], "ids, --filter GLOB or --all"),
    # the directory, presets, demo and releases commands
    ("ls-width", ["ls", "--width", "17q"], "--width 17q: no released SAE has it"),
    ("ls-layer", ["ls", "--layer", "-1"], "--layer -1: no released SAE has it"),
    ("ls-model", ["ls", "--model", "gemma-2-2bb"], "Did you mean: gemma-2-2b"),
    ("ls-release", ["ls", "--release", "gemma-scope-2b-pt-ress"], "Unknown Gemma Scope release"),
    ("ls-site", ["ls", "--site", "resid"], "invalid choice: 'resid'"),
    (
        "info-unknown-id",
        ["info", "gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_81"],
        "Did you mean",
    ),
    (
        "fetch-offline",
        ["fetch", "gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"],
        "HF_HUB_OFFLINE",
    ),
    ("presets-unknown", ["presets", "gemma-2-2b/res/layer_12/width_16kk"], "Unknown preset"),
    ("demo-model-unknown", ["demo", "--model", "tiny-gema-2"], "Did you mean: tiny-gemma-2"),
    ("demo-model-without-presets", ["demo", "--model", "gemma-2-2b"], "has no training preset"),
    (
        "releases-remove-unknown",
        ["releases", "--remove", "local/nothing"],
        "no local release 'local/nothing'",
    ),
    ("no-command", [], "the following arguments are required: COMMAND"),
]
if NO_CUDA:
    CASES += [
        ("train-cuda", _train("--device", "cuda"), "CUDA is not available"),
        ("eval-cuda", _eval("--device", "cuda"), "CUDA is not available"),
    ]


def _with_output(argv: Sequence[str], inputs: Path, out: Path) -> list[str]:
    """``argv`` with its placeholders filled and the command's output folder (train: --output,
    eval and demo: --out) set to ``out``."""
    filled = [a.format(inputs=inputs) for a in argv]
    option = {"train": "--output", "eval": "--out", "demo": "--out"}.get(argv[0] if argv else "")
    return filled if option is None or option in argv else [*filled, option, str(out)]


def _written(folder: Path) -> list[Path]:
    """Files under ``folder``, less the shuffle caches ``datasets`` writes beside a dataset it reads."""
    return sorted(p for p in folder.rglob("*") if not p.name.startswith("cache-"))


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    argv: list[str],
    fragment: str,
    inputs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # anything written to a default folder would land here
    monkeypatch.delenv("GEMMASCOPE_TRACEBACK", raising=False)
    monkeypatch.delenv("SAELENS_GEMMASCOPE_MIRROR", raising=False)
    out = tmp_path / "out"
    before = _written(inputs)
    assert main(_with_output(argv, inputs, out)) == 2
    error, hint = capsys.readouterr().err.strip().splitlines()  # exactly two lines
    assert error.startswith("gemmascope") and ": error: " in error and fragment in error, error
    assert hint in (TRACEBACK_HINT, f"(see `gemmascope{' ' + argv[0] if argv else ''} --help`)")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # no plan.json, calibration record, export or registry beside the inputs
    assert _written(inputs) == before


def test_the_traceback_variable_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMASCOPE_TRACEBACK", "1")
    with pytest.raises(ValueError, match="--width 17q"):
        main(["ls", "--width", "17q"])


@pytest.mark.parametrize(
    ("sidecar", "problem"),
    [
        ('{"release": "gemma-scope-2b-pt-res", ', "not valid JSON"),
        ('{"release": "gemma-scope-2b-pt-res"}', "release and sae_id must both be non-empty strings"),
        ('{"repo_id": "google/gemma-scope-2b-pt-res", "folder": 12}', "repo_id and folder must both"),
        ('["release", "sae_id"]', "expected {"),
    ],
)
def test_a_malformed_gemmascope_json_is_an_error_naming_the_file(
    sidecar: str, problem: str, tmp_path: Path
) -> None:
    from saelens_gemmascope.directory import gemmascope_disk_loader

    (tmp_path / "gemmascope.json").write_text(sidecar)
    with pytest.raises(ValueError) as err:
        gemmascope_disk_loader(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'gemmascope.json'}: ") and problem in str(err.value)


# -- a broken plugin -------------------------------------------------------------------------------


def test_a_broken_plugin_is_one_line_for_every_command(tmp_path: Path) -> None:
    """A third-party plugin that fails to import: every command, `ls` included, prints one error line naming the distribution and the
    entry point and exits 2 (it was a 32-line traceback from the import, exit 1)."""
    site = tmp_path / "site"
    info = site / "gsplug_broken_cli-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gsplug-broken-cli\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[saelens_gemmascope]\nbroken = gsplug_broken_cli\n")
    (site / "gsplug_broken_cli.py").write_text("raise ImportError('missing dependency xyz')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop(DISABLE_ENV_VAR, None)
    env.pop("GEMMASCOPE_TRACEBACK", None)
    script = textwrap.dedent(
        """
        from saelens_gemmascope.cli import main
        codes = [main(argv) for argv in (["ls"], ["plugins"], ["presets", "tiny-gemma-2/*"])]
        import saelens_gemmascope
        try:
            saelens_gemmascope.load_plugins()
        except saelens_gemmascope.PluginLoadError as err:
            print("raised:", err)
        print("codes:", codes)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "codes: [2, 2, 2]" in done.stdout and "raised: plugin 'broken'" in done.stdout
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    reports = lines  # no warning first: the command's own error names the plugin
    assert not any("PluginLoadWarning" in line for line in lines), lines
    assert len(reports) == 6, lines  # error + hint for each of the three commands
    for command, (error, hint) in zip(
        ("ls", "plugins", "presets"), zip(reports[::2], reports[1::2], strict=True), strict=True
    ):
        assert error.startswith(f"gemmascope {command}: error: plugin 'broken'"), error
        assert "distribution gsplug-broken-cli" in error and "'broken = gsplug_broken_cli'" in error
        assert "missing dependency xyz" in error and f"{DISABLE_ENV_VAR}=broken" in error
        assert hint == TRACEBACK_HINT


# -- interrupts ------------------------------------------------------------------------------------


class _Interrupted(KeyboardInterrupt):
    """What a training run raises on SIGTERM (``TrainingInterrupted`` carries ``signum``)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (
            _Interrupted("SIGTERM: stopped at step 12; resume with --resume", signal.SIGTERM),
            143,
            "SIGTERM: stopped",
        ),
        (_Interrupted("SIGINT: stopped at step 3", signal.SIGINT), 130, "SIGINT: stopped at step 3"),
    ],
)
def test_an_interrupt_exits_128_plus_the_signal_with_one_line(
    raised: KeyboardInterrupt,
    code: int,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted(_args: object) -> int:
        raise raised

    monkeypatch.setattr("saelens_gemmascope.cli.releases.run", interrupted)
    assert main(["releases"]) == code
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith(line)


# -- calibration input (item 10) --------------------------------------------------------------------


def _preset() -> TrainingPreset:
    (preset,) = match_presets(["tiny-gemma-2/res/layer_0/width_256"])
    return preset


def _power_law(coefficient: float) -> float:
    return 40.0 * (coefficient / 1e-2) ** -0.5


def _no_probes(saes: Sequence[PresetSAE], tokens: int) -> Mapping[str, float]:
    raise AssertionError("no probe may run with a bad grid")


@pytest.mark.parametrize("grid", [(math.nan, 1e-3), (math.inf,), (0.0, 1e-3), (-1e-3, 1e-2), ()])
def test_calibrate_refuses_a_bad_grid_before_any_probe(grid: tuple[float, ...], tmp_path: Path) -> None:
    preset = _preset()
    with pytest.raises(CalibrationError, match="positive finite λs"):
        calibrate([preset], _no_probes, output_root=tmp_path, probe_tokens={preset.name: 1000}, grid=grid)
    assert not record_path(tmp_path, preset.name).exists()


def test_a_probe_with_a_non_finite_l0_stops_calibration_naming_it(tmp_path: Path) -> None:
    preset = _preset()

    def diverged(saes: Sequence[PresetSAE], tokens: int) -> Mapping[str, float]:
        return {
            s.name: (math.nan if s.l0_coefficient == 1e-1 else _power_law(s.l0_coefficient)) for s in saes
        }

    with pytest.raises(CalibrationError, match=r"λ=0\.1.* measured L0 nan"):
        calibrate(
            [preset], diverged, output_root=tmp_path, probe_tokens={preset.name: 1000}, grid=(1e-3, 1e-1)
        )
    assert not record_path(tmp_path, preset.name).exists()


def test_a_record_is_written_atomically_and_never_as_invalid_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = _preset()
    good = CalibrationRecord(preset.name, 1000, [(1e-3, 80.0)], {t: 1e-2 for t in preset.l0_targets})
    path = write_record(tmp_path, good)
    before = path.read_bytes()
    with pytest.raises(ValueError):  # an infinite λ is not JSON: refused, not written as `Infinity`
        write_record(tmp_path, CalibrationRecord(preset.name, 1000, [], {20.0: math.inf}))

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the write fails before the rename
    with pytest.raises(OSError, match="No space left"):
        write_record(tmp_path, CalibrationRecord(preset.name, 1000, [], {t: 5e-2 for t in preset.l0_targets}))
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert read_record(tmp_path, preset) == good


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"format": "saelens-gemmascope/calibration", "preset": "x", "probes": [', "not valid JSON"),
        ('{"format": "saelens-gemmascope/calibration", "preset": "{name}", "probe_tokens": 10, "probes": [], '
         '"l0_coefficients": [[20.0, Infinity]], "method": "m", "out_of_range": []}', "l0_coefficients"),
        ('{"format": "saelens-gemmascope/calibration", "preset": "{name}", "probe_tokens": "10", "probes": [], '
         '"l0_coefficients": [], "method": "m", "out_of_range": []}', "probe_tokens"),
        ('{"format": "saelens-gemmascope/calibration", "preset": "another/preset", "probe_tokens": 10, '
         '"probes": [], "l0_coefficients": [], "method": "m", "out_of_range": []}', "records preset"),
    ],
)  # fmt: skip
def test_a_corrupt_record_is_an_error_naming_the_file(text: str, problem: str, tmp_path: Path) -> None:
    preset = _preset()
    path = record_path(tmp_path, preset.name)
    path.parent.mkdir(parents=True)
    path.write_text(text.replace("{name}", preset.name))
    with pytest.raises(CalibrationError) as err:
        read_record(tmp_path, preset)
    message = str(err.value)
    assert str(path) in message and problem in message and "delete it" in message
    with pytest.raises(CalibrationError, match="delete it"):
        calibrate([preset], _no_probes, output_root=tmp_path, probe_tokens={preset.name: 1000})
