"""Thin PyFlink adapters over `operators.steps` (engine-agnostic) and `connectors`."""
