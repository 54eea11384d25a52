"""Proof under load and faults: `python -m bench.run` (benchmark) and `python -m bench.fault` (fault suite)."""
