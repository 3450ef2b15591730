"""The ``ngc`` app. Errors: ``error:``/``hint:`` on stderr; exit 2 = bad usage, 1 = the run failed.

An unexpected exception prints one line and asks for ``--debug``, which re-raises it with its traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from ngc import __version__
from ngc.errors import NgcError

app = typer.Typer(
    name="ngc",
    help=(
        "Compress Hugging Face causal LMs into networks of communicating neuronal groups, "
        "and evaluate them.\n\n"
        "MODEL is everywhere one of: a packaged alias (see `ngc models`), a Hugging Face model folder, "
        "a .gguf file, or a hub id org/name (online only).\n\n"
        "Named corpora are read from the data directory: --data-dir, else $NGC_DATA_DIR."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        print(f"ngc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an unexpected error."),
    show_version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Global options."""


def _register_commands() -> None:
    from ngc.cli import (
        bench_cmd,
        compress_cmd,
        demo_cmd,
        dynamics_cmd,
        eval_cmd,
        export_cmd,
        info_cmd,
        models_cmd,
        upgrade_cmd,
    )

    app.command("demo")(demo_cmd.demo_command)
    app.command("compress")(compress_cmd.compress_command)
    app.command("eval")(eval_cmd.eval_command)
    app.command("bench")(bench_cmd.bench_command)
    app.command("info")(info_cmd.info_command)
    app.command("export")(export_cmd.export_command)
    app.command("upgrade")(upgrade_cmd.upgrade_command)
    app.command("dynamics")(dynamics_cmd.dynamics_command)
    app.command("models")(models_cmd.models_command)


_register_commands()


def _fail(message: str, hint: str = "") -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def _show_library_logs() -> None:
    """ngc's own INFO messages (e.g. a one-time GGUF conversion) go to stderr as plain lines."""
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("ngc")
    if not logger.handlers:  # the console looks up sys.stderr at each write, so redirection keeps working
        logger.addHandler(RichHandler(console=Console(stderr=True), show_time=False, show_path=False))
        logger.setLevel(logging.INFO)
    # transformers imports torchao (when installed) with every model load; on a machine without its CUDA kernels
    # torchao logs one warning per missing kernel library, and torch one per registered enum: not ours to show
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _interrupt_on_terminate() -> None:
    """SIGTERM (a job scheduler, torchrun stopping its ranks, kill) unwinds like Ctrl-C, so that temporary
    checkpoint folders are removed on the way out instead of being left behind."""
    import signal

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    args = sys.argv[1:] if argv is None else argv
    _show_library_logs()
    if argv is None:
        _interrupt_on_terminate()
    try:
        # standalone mode: click prints usage errors itself and exits 2; --help and --version exit 0
        app(args=args, prog_name="ngc")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except NgcError as exc:
        if "--debug" in args:
            raise
        _fail(exc.message, exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        _fail("interrupted")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence, never control flow
        if "--debug" in args:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc}", "re-run with `ngc --debug ...` for the traceback")
        code = 1
    if argv is None:
        sys.exit(code)
    return code
