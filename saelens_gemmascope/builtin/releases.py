"""Built-in plugin: every Gemma Scope release, served by this package's converters.

The release names, ids and folders are SAELens's own (the host replaces SAELens's entries of the same
name), generated from the suite manifest with the corrections it documents.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from saelens_gemmascope.contributions import Converter, Release
from saelens_gemmascope.hookspecs import hookimpl


@cache
def gemmascope_converters() -> dict[str, Converter]:
    """The two converter records (one shared object each, so the host sees no clash)."""
    from saelens_gemmascope.directory.converter import default_converter
    from saelens_gemmascope.directory.releases import SAE_CONVERTER_NAME, TRANSCODER_CONVERTER_NAME

    converter = default_converter()
    return {
        name: Converter(name=name, loader=converter.load, config_getter=converter.config)
        for name in (SAE_CONVERTER_NAME, TRANSCODER_CONVERTER_NAME)
    }


def gemmascope_releases() -> list[Release]:
    from saelens_gemmascope.directory.releases import builtin_directory

    converters = gemmascope_converters()
    releases = []
    for entry in builtin_directory().values():
        lookup = entry.lookup()
        releases.append(Release(lookup=lookup, converter=converters[lookup.conversion_func or ""]))
    return releases


@hookimpl
def register_pretrained_saes(register: Callable[[Release], None]) -> None:
    for release in gemmascope_releases():
        register(release)
