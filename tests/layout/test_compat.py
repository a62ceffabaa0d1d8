"""``saelens_gemmascope.compat`` is the one door to SAELens's internals, and the door still fits.

* Every private name in compat's tables still exists in the installed SAELens, with the parameters
  compat was written against; every private instance attribute is still set by its class; every
  SAELens method compat re-states still has the source it re-states (a hash).
* No other module of the package touches a private SAELens (or TransformerLens) name, SAELens's
  converter tables or directory, or writes into a SAELens module; read from the source with ``ast``
  (code only), plus a plain-text search for the private names this package is known to need.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import re
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from saelens_gemmascope import compat

PACKAGE_ROOT = Path(compat.__file__).resolve().parent
COMPAT = PACKAGE_ROOT / "compat.py"
PRIVATE_PREFIXES = ("sae_lens", "transformer_lens")
#: SAELens's tables and the directory's cached dict: only compat may name or write them.
TABLE_NAMES = frozenset({"NAMED_PRETRAINED_SAE_LOADERS", "NAMED_PRETRAINED_SAE_CONFIG_GETTERS"})
DIRECTORY_FUNCTION = "get_pretrained_saes_directory"
MUTATING_METHODS = frozenset(
    {"pop", "popitem", "update", "setdefault", "clear", "__setitem__", "__delitem__"}
)
#: Private SAELens names this package needs (or needed); outside compat.py not even in a comment.
KNOWN_PRIVATE_NAMES = (
    "_train_step",
    "_checkpoint_if_needed",
    "_update_pbar",
    "_is_logging_step",
    "_maybe_log_sparsity",
    "_set_sae_metadata",
    "_compile_sae_if_needed",
    "_save_runner_checkpoint_files",
    "_save_final_outputs",
    "_get_filtered_multi_hook_llm_batch",
    "_mk_activations_store",
    "_get_sliced_context_size",
    "_SAEWrapper",
    "_disable_hooks",
    "_acts_to_saes",
    "_captured_input",
    "_token_mask",
)
KNOWN_NAME_PATTERN = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, KNOWN_PRIVATE_NAMES)) + r")\b")


def resolve(key: str) -> Any:
    module_name, qualname = key.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# -- the door still fits ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(compat.PRIVATE_NAMES))
def test_each_private_name_still_exists_with_the_parameters_compat_was_written_against(key: str) -> None:
    expected = compat.PRIVATE_NAMES[key]
    try:
        obj = resolve(key)
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{key} is gone from SAELens ({err}); see its entry in saelens_gemmascope/compat.py")
    if expected is None:
        assert not callable(obj) or inspect.isclass(obj) or key.endswith(":tqdm"), key
        return
    parameters = tuple(inspect.signature(obj).parameters)
    assert parameters == expected, (
        f"{key} now takes {parameters}, compat was written against {expected}: "
        "check its entry in saelens_gemmascope/compat.py"
    )


def assigned_self_attributes(cls: type) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        found.update(attribute_of(target, {"self"}) for target in targets if attribute_of(target, {"self"}))
    return found


@pytest.mark.parametrize("key", compat.PRIVATE_ATTRIBUTES)
def test_each_private_attribute_is_still_set_by_its_class(key: str) -> None:
    owner, _, attribute = key.rpartition(".")
    cls = resolve(owner)
    assert attribute in assigned_self_attributes(cls), (
        f"{cls.__qualname__} no longer sets self.{attribute}; see saelens_gemmascope/compat.py"
    )


@pytest.mark.parametrize("key", sorted(compat.RESTATED))
def test_each_restated_method_still_has_the_source_compat_restates(key: str) -> None:
    digest = hashlib.sha256(inspect.getsource(resolve(key)).encode()).hexdigest()[:16]
    assert digest == compat.RESTATED[key], (
        f"SAELens changed {key} (source hash {digest}): compare its re-statement in "
        "saelens_gemmascope/compat.py with the new source, then update the hash in RESTATED"
    )


def test_every_table_row_is_a_sae_lens_name() -> None:
    keys = [*compat.PRIVATE_NAMES, *compat.PRIVATE_ATTRIBUTES, *compat.RESTATED]
    assert all(key.startswith("sae_lens") and key.count(":") == 1 for key in keys)


# -- no other door ---------------------------------------------------------------------------------


@cache
def saelens_private_names() -> dict[str, frozenset[str]]:
    """The private names SAELens's own source defines: methods of its classes, attributes it sets
    on ``self``, and module-level functions and classes."""
    import sae_lens

    methods: set[str] = set()
    attributes: set[str] = set()
    module_level: set[str] = set()
    for path in Path(sae_lens.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and is_private(node.name):
                module_level.add(node.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods.update(
                    item.name
                    for item in node.body
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_private(item.name)
                )
            elif (name := attribute_of(node, {"self"})) and is_private(name):
                attributes.add(name)
    torch_own = torch_module_names()  # SAELens's SAEs are torch modules: those names are torch's
    return {
        "methods": frozenset(methods - torch_own),
        "members": frozenset((methods | attributes | module_level) - torch_own),
    }


def torch_module_names() -> set[str]:
    import torch

    return set(dir(torch.nn.Module)) | set(vars(torch.nn.Module()))


def attribute_of(node: ast.AST, owners: set[str]) -> str | None:
    """``attr`` of ``owner.attr`` when ``owner`` is one of ``owners`` (``owner.attr`` itself for a
    module alias, where the owner's name says more)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in owners:
        return node.attr if node.value.id == "self" else f"{node.value.id}.{node.attr}"
    return None


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def is_private_module(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in PRIVATE_PREFIXES


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE_ROOT.rglob("*.py") if p != COMPAT)


def import_violations(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.ImportFrom) and is_private_module(node.module):
        assert node.module is not None
        if any(is_private(part) for part in node.module.split(".")):
            yield f"imports from the private module {node.module}"
        for alias in node.names:
            if is_private(alias.name) or alias.name in TABLE_NAMES:
                yield f"imports {alias.name} from {node.module}"
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if is_private_module(alias.name) and "." in alias.name:
                # A module object is only needed to reach into it (``import sae_lens`` alone is fine).
                yield f"imports the module {alias.name} (to reach into it: go through compat)"


def is_directory_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return name == DIRECTORY_FUNCTION


def directory_violations(node: ast.AST) -> Iterator[str]:
    """SAELens's directory may be read (``get_pretrained_saes_directory().get(...)``), not written."""
    if isinstance(node, ast.Subscript) and is_directory_call(node.value):
        yield f"indexes {DIRECTORY_FUNCTION}() (compat.add_release / remove_release write it)"
    if isinstance(node, ast.Attribute) and node.attr in MUTATING_METHODS and is_directory_call(node.value):
        yield f"calls {DIRECTORY_FUNCTION}().{node.attr}"
    if (
        isinstance(node, (ast.Assign, ast.AnnAssign))
        and node.value is not None
        and is_directory_call(node.value)
    ):
        yield f"keeps a handle on {DIRECTORY_FUNCTION}() (compat.pretrained_directory gives one)"


def saelens_module_aliases(tree: ast.Module) -> set[str]:
    """The names a module binds to SAELens modules (``import sae_lens.x as y``)."""
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_private_module(alias.name):
                    aliases.add(alias.asname or alias.name.split(".")[0])
    return aliases


def module_write_violations(node: ast.AST, aliases: set[str]) -> Iterator[str]:
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    for target in targets:
        if name := attribute_of(target, aliases):
            yield f"writes {name} into a SAELens module"


def member_violations(node: ast.AST) -> Iterator[str]:
    names = saelens_private_names()
    if isinstance(node, ast.Attribute) and node.attr in names["members"]:
        yield f"reaches SAELens's private .{node.attr}"
    if isinstance(node, ast.ClassDef):
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name in names["methods"]:
                yield f"overrides SAELens's private {item.name} in {node.name}"
    if isinstance(node, ast.Name) and node.id in TABLE_NAMES:
        yield f"names {node.id}"


def violations(source: str) -> list[tuple[int, str]]:
    """``(line, problem)`` for every access to SAELens's internals in ``source``."""
    tree = ast.parse(source)
    aliases = saelens_module_aliases(tree)
    return [
        (getattr(node, "lineno", 0), problem)
        for node in ast.walk(tree)
        for problem in (
            *import_violations(node),
            *directory_violations(node),
            *module_write_violations(node, aliases),
            *member_violations(node),
        )
    ]


def test_no_module_but_compat_touches_saelens_internals() -> None:
    found = [
        f"{path.relative_to(PACKAGE_ROOT.parent)}:{line}: {problem}"
        for path in package_modules()
        for line, problem in violations(path.read_text())
    ]
    assert not found, "route these through saelens_gemmascope/compat.py:\n" + "\n".join(found)


def test_no_module_but_compat_mentions_a_known_private_name() -> None:
    found = [
        f"{path.relative_to(PACKAGE_ROOT.parent)}:{number}: {line.strip()}"
        for path in package_modules()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if KNOWN_NAME_PATTERN.search(line)
    ]
    assert not found, "private SAELens names outside compat.py:\n" + "\n".join(found)


# -- the checks can fail ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from sae_lens.cache_activations_runner import _mk_activations_store",
            "imports _mk_activations_store",
        ),
        ("from transformer_lens.utils import _private", "imports _private"),
        ("from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS", "imports NAMED"),
        ("store._get_filtered_multi_hook_llm_batch(True)", "private ._get_filtered_multi_hook_llm_batch"),
        ("class T(SAETrainer):\n    def _train_step(self, sae, sae_in): ...", "overrides SAELens's private"),
        ("super()._save_runner_checkpoint_files(path)", "private ._save_runner_checkpoint_files"),
        ("get_pretrained_saes_directory()[name] = lookup", "indexes get_pretrained_saes_directory()"),
        ("get_pretrained_saes_directory().pop(name)", "calls get_pretrained_saes_directory().pop"),
        ("directory = get_pretrained_saes_directory()", "keeps a handle"),
        ("import sae_lens.training.sae_trainer as t", "imports the module sae_lens.training.sae_trainer"),
        ("import sae_lens as s\ns.tqdm = bar", "writes s.tqdm into a SAELens module"),
        ("wrapper._captured_input = None", "private ._captured_input"),
    ],
)
def test_the_scan_catches_each_kind_of_access(source: str, expected: str) -> None:
    found = [problem for _, problem in violations(source)]
    assert any(expected in problem for problem in found), found


def test_the_scan_lets_public_use_and_our_own_private_names_pass() -> None:
    source = textwrap.dedent(
        """
        from sae_lens import SAE
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
        entry = get_pretrained_saes_directory().get("gemma-scope-2b-pt-res")
        class Ours:
            def _own_helper(self): return self._batches
        store.get_batch_tokens(raise_at_epoch_end=True)
        """
    )
    assert violations(source) == []


def test_the_text_search_catches_a_private_name_in_a_comment() -> None:
    assert KNOWN_NAME_PATTERN.search("# calls super()._train_step(sae, sae_in)")
    assert not KNOWN_NAME_PATTERN.search("def train_step(self, sae, sae_in):")


# -- the re-statements do what SAELens's originals do ------------------------------------------------


def multi_hook_store() -> Any:
    """A small multi-hook store (random 2-layer model, 40 token rows, special tokens dropped)."""
    import datasets
    import torch
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    config = HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=40, act_fn="relu", d_mlp=32
    )
    rows = [[i % 40 for i in range(start, start + 8)] for start in range(40)]
    hooks = {"blocks.0.hook_resid_post": 16, "blocks.1.hook_mlp_out": 16}
    return ActivationsStore.from_config_multi_hook(
        HookedTransformer(config), dataset=datasets.Dataset.from_dict({"input_ids": rows}),
        hook_names=list(hooks), hook_d_ins=hooks, streaming=False, context_size=8,
        store_batch_size_prompts=4, train_batch_size_tokens=8, prepend_bos=False, seqpos_slice=(1, None),
        exclude_special_tokens=torch.tensor([0, 5]),
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_multi_hook_batch_is_the_one_saelens_private_method_draws() -> None:
    """Same activations, same token stream position, through an epoch's end (10 batches a pass)."""
    import torch

    theirs, ours = multi_hook_store(), multi_hook_store()
    rows = 0
    for draw in range(12):
        expected = theirs._get_filtered_multi_hook_llm_batch(raise_on_epoch_end=False)
        got = compat.filtered_multi_hook_llm_batch(ours, raise_on_epoch_end=False)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[hook], expected[hook]) for hook in got), f"draw {draw}"
        rows += got["blocks.0.hook_resid_post"].shape[0]
    assert rows < 12 * 4 * 7  # 4 prompts of 7 positions per draw, special tokens dropped
    assert ours.n_dataset_processed == theirs.n_dataset_processed


@pytest.mark.parametrize("use_error_term", [False, True])
def test_the_reconstruction_wrapper_is_saelens_wrapper_for_a_plain_sae(use_error_term: bool) -> None:
    import torch
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    for parameter in sae.parameters():
        torch.nn.init.normal_(parameter)
    x = torch.randn(2, 3, 8)
    expected = compat.sae_wrapper(sae, use_error_term)(x)
    got = compat.ReconstructionWrapper(sae, use_error_term=use_error_term)(x)
    assert torch.equal(got, expected)
    assert use_error_term == torch.allclose(got, x, atol=1e-5)  # the error term restores the input
