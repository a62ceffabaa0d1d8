"""Built-in plugin: Gemma Scope releases (filled in by later issues)."""
