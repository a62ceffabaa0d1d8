"""The embedded default: tiny Gemma-2-architecture models (a random one for tests, one trained on
Python's documentation text), their tokenizers, their presets, and the demo; registered by the
``gemmascope.demo`` plugin through the same hooks a third party uses."""
