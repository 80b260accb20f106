"""The ``mirrornet`` command line. One module per subcommand; errors print one line, no traceback."""
from __future__ import annotations

import importlib
import sys
import warnings

import click

from ..errors import MirrorNetError, ModelNotice

# (command name, module under mirrornet_tvm.cli, attribute). Order is the order of the help text,
# which follows the workflow: inspect -> train-base -> strategies -> protect -> compile -> package-ta
# -> run -> attack -> tune -> report.
_COMMANDS = [
    ("inspect", "inspect_cmd", "inspect"),
    ("train-base", "train_base_cmd", "train_base"),
    ("strategies", "strategies_cmd", "strategies"),
    ("protect", "protect_cmd", "protect"),
    ("compile", "compile_cmd", "compile_"),
    ("package-ta", "package_ta_cmd", "package_ta"),
    ("run", "run_cmd", "run"),
    ("attack", "attack_cmd", "attack"),
    ("tune", "tune_cmd", "tune"),
    ("report", "report_cmd", "report"),
]


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when it is used, so ``mirrornet --help`` is instant."""

    def list_commands(self, ctx):
        return [name for name, _, _ in _COMMANDS]

    def get_command(self, ctx, cmd_name):
        for name, module, attr in _COMMANDS:
            if name == cmd_name:
                mod = importlib.import_module(f"{__name__}.{module}")
                return getattr(mod, attr)
        return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mirrornet-tvm")
def cli():
    """MirrorNet for Apache TVM: protect a DNN with a CPM in an OP-TEE trusted application."""


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """A ModelNotice prints as one line, ``note: ...``; other warnings as Python prints them."""
    if issubclass(category, ModelNotice):
        click.echo(f"note: {message}", err=True)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv=None):
    """Console entry point: run the CLI, turning the project's errors into one line and an exit code."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            cli.main(args=argv, prog_name="mirrornet", standalone_mode=False)
    except MirrorNetError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)
