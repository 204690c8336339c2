"""Extension points: named lookup tables (rewards, labelers, router kinds, evaluation methods) and the plugin
modules that add to them.

Each extension point is one `Table`; the built-in entries are registered where they are defined, and a plugin
module registers more when it is imported. The config's `plugins:` list names such modules (importable: installed
or on PYTHONPATH); rules/common.smk puts them in the environment variable DRLLM_PLUGINS, which every stage
inherits (local jobs and SLURM jobs alike), and each table imports them before its first lookup, so the stage that
looks a name up knows the plugin's entries. docs/extending.md.

An entry may carry settings of its own: its `settings` is a frozen dataclass whose fields use
`drllm.core.settings.setting` (or "module:Class", imported on first use; None: no settings), and the config block
named after the entry, beside the key that chooses it (`search.reward.<kind>`, `search.<labeler>`,
`train.<router kind>`, `eval.<method>`), reaches it through `Table.settings_of`, built by `from_block`, so its
errors read as a built-in key's. `split_blocks` tells a config block's own keys from such entry blocks.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Collection, Generic, Iterator, Mapping, TypeVar

from drllm.core.blocks import check_keys
from drllm.core.settings import from_block

PLUGINS_ENV = "DRLLM_PLUGINS"  # comma-separated module names
_loaded: set[str] = set()
_loaded_env: str | None = None  # the variable's value when its modules were last imported

T = TypeVar("T")


class PluginError(ImportError):
    """A plugin module named in the config (`plugins:`) could not be imported."""


def plugin_modules() -> list[str]:
    """The plugin modules named in DRLLM_PLUGINS, in order."""
    return [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]


def load_plugins(modules: list[str] | None = None) -> None:
    """Import each plugin module once (default: those in DRLLM_PLUGINS); importing one registers its entries.
    Every table lookup calls this (rewards are looked up per evaluated path), so an unchanged variable returns
    at once."""
    global _loaded_env
    if modules is None:
        env = os.environ.get(PLUGINS_ENV, "")
        if env == _loaded_env:
            return
        modules = plugin_modules()
    else:
        env = None
    for name in modules:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PluginError(f"config plugins: cannot import plugin module {name!r} ({exc}); it must be "
                              "installed or on PYTHONPATH") from exc
        _loaded.add(name)
    if env is not None:
        _loaded_env = env


class Table(Generic[T]):
    """Named entries of one extension point. `get` loads the plugins first, and an unknown name fails naming the
    config key that chose it and every known name."""

    def __init__(self, what: str, config_key: str):
        self.what, self.config_key = what, config_key
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add `entry` under its own `name` (one name per entry: the name the config chooses it by)."""
        name = getattr(entry, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.what} names must be identifiers, got {name!r} (the entry's `name`)")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy one clean up after themselves)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        load_plugins()
        if name not in self._entries:
            raise ValueError(f"{self.config_key}: unknown {self.what} {name!r}; known: {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        load_plugins()
        return list(self._entries)

    def with_settings(self) -> list[str]:
        """The entries that declare settings (each may have a config block of its own)."""
        return [name for name in self.names() if getattr(self._entries[name], "settings", None) is not None]

    def settings_of(self, name: str, block: Mapping[str, Any] | None, where: str) -> Any:
        """Entry `name`'s settings object built from its config block `where` (absent keys take the defaults,
        unknown keys and bad values fail naming `where`, as a built-in block's do); None for an entry that declares
        no settings (a non-empty block for it is refused)."""
        return entry_settings(getattr(self.get(name), "settings", None), block, where, f"{self.what} {name!r}")

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def settings_class(settings: type | str | None) -> type | None:
    """An entry's `settings`: the class itself, or "module:Class" imported now (None: no settings)."""
    if not isinstance(settings, str):
        return settings
    module, _, name = settings.partition(":")
    return getattr(importlib.import_module(module), name)


def entry_settings(settings: type | str | None, block: Mapping[str, Any] | None, where: str, what: str) -> Any:
    """The settings object of an entry (`what`, for messages) from its config block `where`: `from_block` of its
    settings class; None when it declares none, and then a non-empty block is an error."""
    cls = settings_class(settings)
    if cls is None:
        if block:
            raise ValueError(f"{where}: {what} has no settings of its own, got {sorted(block)}")
        return None
    return from_block(cls, block, where)


def split_blocks(block: Mapping[str, Any], own: Collection[str], table: Table, where: str) -> tuple[dict, dict]:
    """A config block's own keys and the blocks of `table`'s entries beside them (`<where>.<entry>: {...}`), each
    as given. A key that is neither fails naming `where`, the own keys and the entries with settings; an entry
    block must be a mapping. An entry whose name is an own key cannot have a block there (the key wins)."""
    entries = [name for name in table.with_settings() if name not in own]
    check_keys(where, block, [*own, *entries])
    blocks = {key: value for key, value in block.items() if key not in own}
    for key, value in blocks.items():
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}.{key} must be a mapping (the settings of {table.what} {key!r}), got {value!r}")
    return {key: value for key, value in block.items() if key in own}, blocks
