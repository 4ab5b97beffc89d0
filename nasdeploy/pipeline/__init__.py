"""The end-to-end pipeline: search -> derive -> train -> export -> profile -> report in one run directory."""
