"""Training static networks from scratch with the published recipes."""
