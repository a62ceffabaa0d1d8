"""The suite: the catalog of presets, planning passes within memory, calibrating λ, training the
passes, and exporting what they trained as releases."""
