"""The Gemma Scope directory: the suite manifest, SAELens directory entries, and the converter.

Public API: :func:`load_sae`, :func:`list_saes`, :func:`sae_info`, :func:`fetch_sae`,
:func:`gemmascope_disk_loader` / :func:`disk_converter_for` (``SAE.load_from_disk``), and the errors.
"""

from saelens_gemmascope.directory.api import FetchResult, SaeInfo, fetch_sae, list_saes, load_sae, sae_info
from saelens_gemmascope.directory.disk import disk_converter_for, gemmascope_disk_loader
from saelens_gemmascope.directory.errors import (
    MIRROR_ENV_VAR,
    ParamsFileError,
    SaeFileUnavailableError,
    UnknownReleaseError,
    UnknownRepoError,
    UnknownSaeIdError,
)
from saelens_gemmascope.directory.manifest import SaeVariant, load_manifest

__all__ = [
    "MIRROR_ENV_VAR",
    "FetchResult",
    "ParamsFileError",
    "SaeFileUnavailableError",
    "SaeInfo",
    "SaeVariant",
    "UnknownReleaseError",
    "UnknownRepoError",
    "UnknownSaeIdError",
    "disk_converter_for",
    "fetch_sae",
    "gemmascope_disk_loader",
    "list_saes",
    "load_manifest",
    "load_sae",
    "sae_info",
]
