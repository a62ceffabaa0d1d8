"""The package's own Gemma Scope support, written as plugins on the same hooks a third party uses.

Each module here is one plugin, registered by the host under ``gemmascope.<module>``; so is
:mod:`saelens_gemmascope.demo.plugin` (``gemmascope.demo``, the tiny models and their presets).
"""

#: plugin name -> module
BUILTIN_PLUGINS: dict[str, str] = {
    "gemmascope.architectures": "saelens_gemmascope.builtin.architectures",
    "gemmascope.models": "saelens_gemmascope.builtin.models",
    "gemmascope.releases": "saelens_gemmascope.builtin.releases",
    "gemmascope.presets": "saelens_gemmascope.builtin.presets",
    "gemmascope.demo": "saelens_gemmascope.demo.plugin",
}
