"""Built-in plugin: Gemma Scope models (filled in by later issues)."""
