"""Built-in plugin: every Gemma Scope and Gemma Scope 2 release, served by this package's converters.

The release names, ids and folders are SAELens's own (the host replaces SAELens's entries of the same
name), generated from the suite manifests (configs/gemma_scope_suite.yaml, gemma_scope_2_suite.yaml)
with the corrections they document.
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


@cache
def gemmascope2_converter() -> Converter:
    """The Gemma Scope 2 converter record (one shared object, so the host sees no clash)."""
    from saelens_gemmascope.directory.scope2_converter import CONVERTER_NAME, default_scope2_converter

    converter = default_scope2_converter()
    return Converter(name=CONVERTER_NAME, loader=converter.load, config_getter=converter.config)


def gemmascope2_releases() -> list[Release]:
    """Every ``gemma-scope-2-*`` release under SAELens's own name, served by the gemmascope2 converter."""
    from saelens_gemmascope.directory.scope2_releases import scope2_lookup, scope2_releases

    converter = gemmascope2_converter()
    return [
        Release(lookup=scope2_lookup(release), converter=converter) for release in scope2_releases().values()
    ]


@hookimpl
def register_pretrained_saes(register: Callable[[Release], None]) -> None:
    for release in [*gemmascope_releases(), *gemmascope2_releases()]:
        register(release)
