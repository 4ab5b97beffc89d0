"""`python -m nasdeploy` runs the CLI."""

from nasdeploy.cli.main import main

main()
