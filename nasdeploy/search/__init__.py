"""Architecture search: the architect (first/second order), search loops and derivation drivers."""
