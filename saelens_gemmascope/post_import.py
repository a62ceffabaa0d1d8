"""Run a function once a module has been imported: a post-import hook, without touching that module.

Why: the package registers its plugins with SAELens, but importing SAELens (and torch) costs
seconds that ``gemmascope --help`` or reading a hook spec should not pay. So ``import
saelens_gemmascope`` asks for :func:`call_when_imported` ``("sae_lens", register)``: at once if
SAELens is already imported, otherwise right after ``sae_lens/__init__`` has finished executing,
inside the ``import sae_lens`` statement that loaded it, so any SAELens use after it sees the
registrations.

How: a finder first in ``sys.meta_path`` answers no import itself; for the watched module it asks
the finders after it for the real spec and wraps that spec's loader, whose ``exec_module`` runs the
real one and then the callback. The finder removes itself before the callback runs, the loader is
put back on the module, and a callback that raises is reported as one warning line: the import of
the watched module never fails because of it.

One more rule, against circular imports: the callback registers plugins that import modules of
``hold_package``; if the watched module is imported while a module of that package is itself being
imported (``import saelens_gemmascope.directory`` imports SAELens halfway through), the callback
waits until the outermost such import has finished, so it never sees a half-initialized module.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # importlib.abc is left out at run time too: it imports importlib.resources (tempfile, shutil), a
    # fifth of a ``python -c pass``; the finder and the loader below are duck-typed.
    import importlib.machinery


class PostImportWarning(UserWarning):
    """A post-import callback raised; the import it followed went on."""


def call_when_imported(name: str, callback: Callable[[], None], *, hold_package: str | None = None) -> None:
    """Run ``callback`` once, as soon as module ``name`` is imported (now, if it already is).

    With ``hold_package``, an import of ``name`` that happens while a module of that package is
    being imported runs the callback once the outermost such import has finished. Asking again for
    the same ``name`` and ``callback`` changes nothing while the first request is pending, and once
    run, a callback is not run again for the same module.
    """
    key = (name, callback)
    with _LOCK:
        if key in _DONE or any(hook.key == key for hook in _pending_hooks()):
            return
        if name not in sys.modules:
            sys.meta_path.insert(0, _PostImportFinder(name, callback, hold_package))
            return
        _DONE.add(key)
    _run_reporting(callback, name)


def pending(name: str) -> bool:
    """Whether a callback still waits for module ``name`` (for tests and diagnostics)."""
    return any(hook.name == name for hook in _pending_hooks())


_LOCK = threading.RLock()
_DONE: set[tuple[str, Callable[[], None]]] = set()


def _pending_hooks() -> list[_PostImportFinder]:
    return [finder for finder in sys.meta_path if isinstance(finder, _PostImportFinder)]


def _run_reporting(callback: Callable[[], None], name: str) -> None:
    try:
        callback()
    except Exception as err:  # the import of `name` succeeded and must stay so
        # One line, no source line under it (warn_explicit without a real file to quote).
        message = f"after importing {name}: {getattr(callback, '__qualname__', callback)} failed: "
        warnings.warn_explicit(
            message + f"{type(err).__name__}: {err}", PostImportWarning, filename=__name__, lineno=0
        )


class _PostImportFinder:
    """Wraps the loader of ``name`` (and, while it waits, of the modules of ``hold_package``)."""

    def __init__(self, name: str, callback: Callable[[], None], hold_package: str | None) -> None:
        self.name = name
        self.callback = callback
        self.hold_prefix = f"{hold_package}." if hold_package else None
        self.key = (name, callback)
        self.watched_imported = False
        self.holding = 0  # modules of hold_package being executed right now
        self.searching: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        watched = fullname == self.name
        held = self.hold_prefix is not None and fullname.startswith(self.hold_prefix)
        if not (watched or held) or fullname in self.searching:
            return None
        spec = self._real_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _NotifyingLoader(spec.loader, self, watched=watched)
        return spec

    def _real_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> importlib.machinery.ModuleSpec | None:
        """The spec the finders after this one give (this one left out to not recurse)."""
        self.searching.add(fullname)
        try:
            for finder in list(sys.meta_path):
                find_spec = getattr(finder, "find_spec", None)
                if finder is self or find_spec is None:
                    continue
                spec: importlib.machinery.ModuleSpec | None = find_spec(fullname, path, target)
                if spec is not None:
                    return spec
            return None
        finally:
            self.searching.discard(fullname)

    def started(self, watched: bool) -> None:
        if not watched:
            self.holding += 1

    def finished(self, watched: bool, succeeded: bool) -> None:
        if watched:
            self.watched_imported = self.watched_imported or succeeded
        else:
            self.holding -= 1
        if self.watched_imported and self.holding == 0:
            self._fire()

    def _fire(self) -> None:
        with _LOCK:
            if self not in sys.meta_path:
                return  # fired already (another thread)
            sys.meta_path.remove(self)
            _DONE.add(self.key)
        _run_reporting(self.callback, self.name)


class _NotifyingLoader:
    """The real loader, and a word to the finder before and after the module executes."""

    def __init__(self, loader: Any, finder: _PostImportFinder, watched: bool) -> None:
        self.loader = loader
        self.finder = finder
        self.watched = watched

    def __getattr__(self, attribute: str) -> Any:
        # get_source, get_resource_reader, is_package...: what importlib.resources, inspect and
        # linecache ask of the module's loader while it executes.
        return getattr(self.loader, attribute)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self.finder.started(self.watched)
        succeeded = False
        try:
            self.loader.exec_module(module)
            succeeded = True
        finally:
            # The module keeps its real loader: nothing after the import sees this wrapper.
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader
            self.finder.finished(self.watched, succeeded)
