"""The search and training configs of each space, one module per space (dataclasses validated at load; no model code)."""
