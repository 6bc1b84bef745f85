"""One registry mechanism for every kind of part, plus plugin discovery.

Every swappable part of pixelgen (backbones, samplers, loss terms, frozen encoders, text conditioners,
datasets) lives in a :class:`Registry`. Built-in parts register themselves when their module is imported;
the registry imports those modules lazily on first use. Third-party packages add parts through the
``pixelgen`` entry-point group: each entry point names a module (or object) that pluggy registers as a
plugin, and whose ``pixelgen_register(registries)`` hook implementation registers parts. A plugin that
fails to import is reported by name and skipped; the others still load. Each plugin loaded, and every part
it replaces, is logged once; `PIXELGEN_DISABLE_PLUGINS=1` loads none, `PIXELGEN_PLUGINS=name1,name2` only those.

Example (in a third-party package)::

    import pixelgen

    @pixelgen.hookimpl
    def pixelgen_register(registries):
        @registries.backbone.register("my_net")
        def my_net(**kw): ...

and in its ``pyproject.toml``::

    [project.entry-points.pixelgen]
    my_plugin = "my_package.plugin"
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

__all__ = [
    "ENTRY_POINT_GROUP",
    "Registry",
    "RegistryEntry",
    "Registries",
    "registries",
    "hookimpl",
    "hookspec",
    "discover_plugins",
    "plugin_errors",
    "loaded_plugins",
    "reset_plugins",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pixelgen"
hookspec = pluggy.HookspecMarker("pixelgen")
hookimpl = pluggy.HookimplMarker("pixelgen")


class _HookSpecs:
    @hookspec
    def pixelgen_register(self, registries: Registries) -> None:
        """Register parts (``registries.backbone.register(...)``, ``registries.loss.register(...)`` ...)."""


@dataclass
class RegistryEntry:
    """A registered part: the callable that builds it and free-form metadata (e.g. ``gated=True``)."""

    name: str
    builder: Callable[..., Any]
    kind: str
    source: str = "builtin"
    metadata: dict = field(default_factory=dict)
    doc: str = ""


class Registry:
    """Name -> builder mapping for one kind of part.

    ``register`` is a decorator; ``build(name, **overrides)`` calls the builder with keyword overrides;
    ``list(pattern)`` returns sorted names matching a glob. Unknown names raise ``KeyError`` whose message
    suggests close matches.
    """

    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self._builtin_modules = tuple(builtin_modules)
        self._builtins_loaded = False
        self._entries: dict[str, RegistryEntry] = {}
        self._replaced: dict[str, RegistryEntry] = {}  # built-ins a plugin overrode (restored by reset_plugins)
        self._lock = threading.RLock()

    # -- registration -------------------------------------------------------------------------------
    def register(
        self,
        name: str | Callable | None = None,
        *,
        override: bool = False,
        source: str | None = None,
        **metadata: Any,
    ):
        """Register a builder under ``name`` (default: the function's ``__name__``).

        Usable as ``@reg.register``, ``@reg.register("name", gated=True)`` or ``reg.register("n")(fn)``.
        Registering a taken name raises unless ``override=True``.
        """
        if callable(name) and not isinstance(name, str):
            return self.register(None, override=override, source=source, **metadata)(name)

        def decorator(builder: Callable[..., Any]):
            if not callable(builder):
                raise TypeError(f"Cannot register {builder!r} as {self.kind} '{name}': it is not callable.")
            key = name or getattr(builder, "__name__", None)
            if not key or not isinstance(key, str):
                raise ValueError(f"A {self.kind} needs a non-empty string name to be registered.")
            with self._lock:
                if key in self._entries and not override:
                    prev = self._entries[key]
                    if prev.builder is builder:
                        return builder
                    raise KeyError(
                        f"{self.kind} '{key}' is already registered (from {prev.source}); "
                        "pass override=True to replace it."
                    )
                src = source or _current_source() or getattr(builder, "__module__", "builtin")
                prev = self._entries.get(key)
                if prev is not None and prev.builder is not builder:
                    if src.startswith("plugin:") and not prev.source.startswith("plugin:"):
                        self._replaced.setdefault(key, prev)
                    # Said once per replacement, loudly: a plugin changing a built-in changes results.
                    log.warning("%s replaces the %s '%s' registered by %s.", src, self.kind, key, prev.source)
                self._entries[key] = RegistryEntry(
                    name=key,
                    builder=builder,
                    kind=self.kind,
                    source=src,
                    metadata=dict(metadata),
                    doc=(builder.__doc__ or "").strip().split("\n")[0],
                )
            return builder

        return decorator

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    # -- lookup -------------------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            with self._lock:
                if not self._builtins_loaded:
                    self._builtins_loaded = True
                    for mod in self._builtin_modules:
                        importlib.import_module(mod)

    def _populate(self) -> None:
        self._load_builtins()
        discover_plugins()

    def get(self, name: str) -> RegistryEntry:
        if not isinstance(name, str):
            raise TypeError(f"A {self.kind} name must be a string, got {type(name).__name__}.")
        self._populate()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self._unknown_message(name)) from None

    def build(self, name: str, /, **overrides: Any) -> Any:
        """Build the part registered as ``name``, passing ``overrides`` as keyword arguments.

        The keywords are checked first (:func:`check_keywords`): an unknown name is a ``TypeError`` with a
        "did you mean", a value of the wrong type one sentence naming the parameter.
        """
        entry = self.get(name)
        kwargs = check_keywords(entry.builder, overrides, f"{self.kind} '{name}'")
        return entry.builder(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a glob pattern (``*`` by default)."""
        self._populate()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[RegistryEntry]:
        return [self._entries[n] for n in self.list(pattern)]

    def __contains__(self, name: object) -> bool:
        self._populate()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    def _unknown_message(self, name: str) -> str:
        msg = f"Unknown {self.kind} '{name}'" + suggest(name, list(self._entries), listing="registered")
        errs = plugin_errors()
        if errs:
            msg += " (plugins that failed to load: " + ", ".join(sorted(errs)) + ")"
        return msg


def suggest(word: str, options: Any, *, listing: str = "known") -> str:
    """The one wording of close-match hints: ``"; did you mean 'a', 'b'?"`` or ``"; known: a, b."``."""
    names = sorted(str(o) for o in options)
    close = difflib.get_close_matches(str(word), names, n=3, cutoff=0.5)
    if close:
        return "; did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
    return f"; {listing}: {', '.join(names) or 'none'}."


def _signature_functions(builder: Callable[..., Any]) -> tuple[list[Callable[..., Any]], bool]:
    """The functions whose parameters a builder accepts, and whether it also takes any other keyword.

    A class: the ``__init__`` of each class in its MRO, following ``**kwargs`` forwarding up the hierarchy
    (a subclass passing the rest to its base); a function: itself (``**kwargs`` means anything goes).
    """
    if isinstance(builder, type):
        found = []
        for klass in builder.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            try:
                params = inspect.signature(init).parameters.values()
            except (TypeError, ValueError):
                return found, True
            found.append(init)
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                return found, False
        return found, not found
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return [], True
    return [builder], any(p.kind is p.VAR_KEYWORD for p in params)


def accepted_keywords(builder: Callable[..., Any]) -> list[str] | None:
    """The keyword names ``builder`` accepts, or None when it takes any keyword (``**kwargs`` it forwards)."""
    functions, open_ended = _signature_functions(builder)
    if open_ended:
        return None
    names: list[str] = []
    for func in functions:
        for p in inspect.signature(func).parameters.values():
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names:
                names.append(p.name)
    return names


def check_keywords(builder: Callable[..., Any], kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    """Check keyword arguments for ``builder``: names (with "did you mean") and the types its hints declare
    (:func:`pixelgen.utils.typecheck.check_call_arguments`). Returns them (whole floats given for an ``int``
    parameter become ints)."""
    from .utils.typecheck import check_call_arguments

    accepted = accepted_keywords(builder)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                raise TypeError(f"{what} has no parameter '{key}'{suggest(key, accepted, listing='it accepts')}")
    out = dict(kwargs)
    functions, _ = _signature_functions(builder)
    for func in functions:
        out = check_call_arguments(func, out, what)
    return out


class Registries:
    """The set of registries, handed to plugins' ``pixelgen_register`` hook."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Registry] = {}

    def add(self, registry: Registry) -> Registry:
        self._by_kind[registry.kind] = registry
        return registry

    def __getattr__(self, kind: str) -> Registry:
        try:
            return self.__dict__["_by_kind"][kind]
        except KeyError:
            raise AttributeError(
                f"No registry of kind '{kind}'; known kinds: {', '.join(sorted(self._by_kind))}."
            ) from None

    def __getitem__(self, kind: str) -> Registry:
        return getattr(self, kind)

    def kinds(self) -> list[str]:
        return sorted(self._by_kind)


registries = Registries()
# The built-in module list of each registry is what gets imported the first time it is used.
registries.add(Registry("backbone", ("pixelgen.backbones",)))
registries.add(Registry("sampler", ("pixelgen.samplers",)))
registries.add(Registry("loss", ("pixelgen.losses",)))
registries.add(Registry("encoder", ("pixelgen.encoders",)))
registries.add(Registry("conditioner", ("pixelgen.conditioners",)))
registries.add(Registry("dataset", ("pixelgen.data",)))
registries.add(Registry("train_preset", ("pixelgen.train.presets",)))
registries.add(Registry("objective_preset", ("pixelgen.losses.presets",)))
registries.add(Registry("sampling_preset", ("pixelgen.samplers",)))


# -- plugin discovery ---------------------------------------------------------------------------------
_plugin_lock = threading.RLock()
_discovered = False
_discovering = False
_plugin_errors: dict[str, str] = {}
_loaded_plugins: dict[str, str] = {}
_current = threading.local()
_manager: pluggy.PluginManager | None = None


def _current_source() -> str | None:
    return getattr(_current, "source", None)


def plugin_manager() -> pluggy.PluginManager:
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("pixelgen")
        pm.add_hookspecs(_HookSpecs)
        _manager = pm
    return _manager


def _entry_points() -> list[metadata.EntryPoint]:
    eps = metadata.entry_points()
    if hasattr(eps, "select"):
        found = list(eps.select(group=ENTRY_POINT_GROUP))
    else:  # pragma: no cover - Python < 3.10 shape
        found = list(eps.get(ENTRY_POINT_GROUP, []))
    # The same distribution can be visible twice (e.g. an editable install plus a path entry).
    seen, unique = set(), []
    for ep in found:
        if ep.name not in seen:
            seen.add(ep.name)
            unique.append(ep)
    return unique


DISABLE_ENV = "PIXELGEN_DISABLE_PLUGINS"
ALLOW_ENV = "PIXELGEN_PLUGINS"


def _plugin_policy() -> tuple[bool, set[str] | None]:
    """(plugins disabled, allow-list or None) from ``PIXELGEN_DISABLE_PLUGINS`` and ``PIXELGEN_PLUGINS``."""
    disabled = os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    allowed = os.environ.get(ALLOW_ENV)
    if allowed is None:
        return disabled, None
    return disabled, {name.strip() for name in allowed.split(",") if name.strip()}


def discover_plugins(force: bool = False) -> dict[str, str]:
    """Load every ``pixelgen`` entry point once and run its ``pixelgen_register`` hook.

    ``PIXELGEN_DISABLE_PLUGINS=1`` loads none; ``PIXELGEN_PLUGINS=name1,name2`` loads only the entry points of
    those names (the others are logged as skipped). Each plugin loaded is logged once, and so is every part it
    replaces. Returns ``{plugin name: error message}`` for the plugins that failed; a failure is logged as a
    warning naming the plugin and never stops the other plugins from loading.
    """
    global _discovered, _discovering
    if (_discovered and not force) or _discovering:
        return dict(_plugin_errors)
    with _plugin_lock:
        if (_discovered and not force) or _discovering:
            return dict(_plugin_errors)
        _discovering = True
        try:
            pm = plugin_manager()
            disabled, allowed = _plugin_policy()
            found = _entry_points()
            if disabled:
                if found:
                    log.info("%s is set: %d pixelgen plugin(s) not loaded.", DISABLE_ENV, len(found))
                found = []
            elif allowed is not None:
                skipped = sorted(ep.name for ep in found if ep.name not in allowed)
                if skipped:
                    log.info("pixelgen plugins not in %s, not loaded: %s.", ALLOW_ENV, ", ".join(skipped))
                found = [ep for ep in found if ep.name in allowed]
            if found:  # built-ins first, so that a plugin's override=True is what wins, whatever is used first
                for reg in registries._by_kind.values():
                    reg._load_builtins()
            for ep in found:
                if ep.name in _loaded_plugins or pm.get_plugin(ep.name) is not None:
                    continue
                _current.source = f"plugin:{ep.name}"
                try:
                    plugin = ep.load()
                    pm.register(plugin, name=ep.name)
                    impls = [i for i in pm.hook.pixelgen_register.get_hookimpls() if i.plugin_name == ep.name]
                    for impl in impls:
                        impl.function(registries=registries)
                    _loaded_plugins[ep.name] = ep.value
                    _plugin_errors.pop(ep.name, None)
                    parts = [
                        f"{reg.kind} '{name}'"
                        for reg in registries._by_kind.values()
                        for name, entry in reg._entries.items()
                        if entry.source == f"plugin:{ep.name}"
                    ]
                    log.info(
                        "pixelgen plugin '%s' loaded from %s: %s.", ep.name, ep.value, ", ".join(parts) or "no parts"
                    )
                except Exception as exc:  # a broken plugin must not stop the others
                    if pm.get_plugin(ep.name) is not None:
                        pm.unregister(name=ep.name)
                    reason = f"{type(exc).__name__}: {exc}"
                    _plugin_errors[ep.name] = reason
                    log.warning(
                        "pixelgen plugin '%s' (%s) failed to load and was skipped: %s", ep.name, ep.value, reason
                    )
                finally:
                    _current.source = None
            _discovered = True
        finally:
            _discovering = False
    return dict(_plugin_errors)


def plugin_errors() -> dict[str, str]:
    """``{plugin name: reason}`` for plugins that failed to load (empty if all loaded)."""
    return dict(_plugin_errors)


def loaded_plugins() -> dict[str, str]:
    """``{plugin name: entry-point value}`` for plugins that loaded."""
    return dict(_loaded_plugins)


def reset_plugins() -> None:
    """Forget discovery so that the next lookup scans entry points again (tests use this).

    Parts registered by plugins are removed too; built-in parts (also those a plugin had replaced) stay.
    """
    global _discovered, _manager
    with _plugin_lock:
        for reg in registries._by_kind.values():
            for name, entry in list(reg._entries.items()):
                if entry.source.startswith("plugin:"):
                    del reg._entries[name]
            reg._entries.update(reg._replaced)
            reg._replaced.clear()
        _plugin_errors.clear()
        _loaded_plugins.clear()
        _manager = None
        _discovered = False
        importlib.invalidate_caches()
