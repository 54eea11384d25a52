"""The domain: its nouns (models) and what can go wrong (errors). Plain values, no I/O."""
