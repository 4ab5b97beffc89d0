"""The `nasdeploy` command: subcommands are imported only when invoked (deployment never loads search)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click
import yaml

from nasdeploy._version import __version__
from nasdeploy.errors import NasDeployError
from nasdeploy.utils.files import describe_os_error

# command name -> "module:attribute" of its click command. Each stage adds one line here.
SUBCOMMANDS: dict[str, str] = {
    "genotypes": "nasdeploy.cli.genotypes_cmd:genotypes",
    "build-ext": "nasdeploy.cli.build_ext_cmd:build_ext",
    "profile": "nasdeploy.cli.profile_cmd:profile",
    "export": "nasdeploy.cli.export_cmd:export",
    "search": "nasdeploy.cli.search_cmd:search",
    "train": "nasdeploy.cli.train_cmd:train",
    "pipeline": "nasdeploy.cli.pipeline_cmd:pipeline",
}


class LazyGroup(click.Group):
    """A click group that imports each subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nasdeploy")
def cli() -> None:
    """nasdeploy: neural architecture search all the way to deployment."""


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def describe_decode_error(exc: UnicodeDecodeError) -> str:
    """One line for text that is not in the expected encoding (a binary file given as config or genotype)."""
    return f"a file is not {exc.encoding.upper()} text (byte {exc.start}: {exc.reason}); is it a binary file?"


def _worker_message(text: str) -> str:
    """The error a DataLoader worker raised, from the 'Caught X in DataLoader worker' text torch re-raises with."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2 or not (lines[0].startswith("Caught ") and "Original Traceback" in text):
        return text
    name, sep, message = lines[-1].partition(": ")  # "nasdeploy.errors.DataError: cannot read image ..."
    return message if sep and name.rpartition(".")[2] in lines[0] else text


def _is_out_of_memory(exc: RuntimeError) -> bool:
    """torch's failed allocations: CPU ("can't allocate memory") and CUDA (torch.OutOfMemoryError)."""
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)


def _fail(message: str) -> None:
    click.echo(f"error: {_first_line(message)}", err=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, turning nasdeploy errors, file errors and unreadable input into one line, exit 2."""
    try:
        return cli.main(args=argv, prog_name="nasdeploy", standalone_mode=False)
    except NasDeployError as exc:
        _fail(_worker_message(str(exc)))
    except BrokenPipeError:  # `nasdeploy ... | head`: the reader left; exit quietly like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:  # unwritable or impossible output paths, missing or unreadable input files
        _fail(describe_os_error(exc))
    except UnicodeDecodeError as exc:
        _fail(describe_decode_error(exc))
    except yaml.YAMLError as exc:
        _fail(f"not valid YAML: {_first_line(getattr(exc, 'problem', None) or exc)}")
    # The loaders bound size and depth before allocating (nasdeploy.utils.limits); these catch what they missed.
    except RecursionError:
        _fail("an input is nested too deeply to process (Python's recursion limit was reached)")
    except MemoryError:
        _fail("out of memory: the inputs or settings need more memory than this process may use; make them smaller")
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        _fail(f"out of memory: {_first_line(exc)}")
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # `nasdeploy` alone: the help text
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # a usage error (missing argument, bad value) is one line too
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if isinstance(exc, click.UsageError) and ctx is not None else ""
        click.echo(f"error: {_first_line(exc.format_message())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
