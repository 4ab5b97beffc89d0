"""Small shared helpers (atomic file writes, lazy optional imports)."""
