"""The package's own Gemma Scope support, written as plugins on the same hooks a third party uses.

Each module here is one plugin, registered by the host under ``gemmascope.<module>``.
"""

BUILTIN_PLUGIN_MODULES: tuple[str, ...] = ("architectures", "models", "releases", "presets")
