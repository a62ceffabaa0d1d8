"""Built-in plugin: Gemma Scope architectures (filled in by later issues)."""
