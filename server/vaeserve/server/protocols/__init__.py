"""The wire protocols: each a servicer that calls the registry and served models, and its converters."""
