"""Built-in plugin: Gemma Scope presets (filled in by later issues)."""
