"""Human-readable configuration shipped as package data (``saelens_gemmascope.configs``)."""
