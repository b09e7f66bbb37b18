"""The Typer app of `nfx`, its global options, the error boundary every command runs in, and
`main`. The commands (cli/train.py, cli/runs.py, cli/data.py) register on `app`; nfx.cli imports
them."""

from __future__ import annotations

import logging
import os
import sys

import typer

from nfx import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts contain [default: …] literally
    help="Fine-tune normalizer-free networks (NFNets) on small medical imaging datasets.",
)
_state = {"debug": os.environ.get("NFX_DEBUG") == "1", "quiet": False}


def printer():
    from nfx.console import Printer, RichPrinter
    from nfx.train.distributed import env_rank

    if env_rank() != 0:  # several processes (torchrun / accelerate launch): only rank 0 talks
        return Printer(quiet=True)  # (errors still show: the boundary prints them)
    return RichPrinter(quiet=_state["quiet"])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nfx {__version__}")
        raise typer.Exit()


def boundary(command):
    """The error boundary of every command: NfxError → one line, exit 1; anything else too, with
    no traceback unless --debug. functools.wraps keeps the signature Typer reads the options from."""
    import functools

    @functools.wraps(command)
    def run(*args, **kwargs):
        _run(lambda: command(*args, **kwargs))

    return run


def _run(fn) -> None:
    from nfx.errors import NfxError, short_reason

    try:
        fn()
    except NfxError as e:
        if _state["debug"]:
            raise
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted")
    except Exception as e:  # noqa: BLE001 - the boundary: no traceback unless --debug
        from nfx.errors import MACHINE_ERRNOS

        if _state["debug"]:
            raise
        if isinstance(e, OSError) and e.errno in MACHINE_ERRNOS:  # a full disk / read-only folder: the machine
            _fail(f"{e.filename or 'an output file'}: {e.strerror or e}; free space there or choose a writable "
                  "--out (files already written, e.g. the last good checkpoint, are kept)")
        _fail(f"internal error: {short_reason(e, 200, with_type=True)} "
              "(run again with --debug for the traceback, and report it)")


def _fail(msg: str) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(msg)}")
    except Exception:
        print(f"error: {msg}", file=sys.stderr)
    raise typer.Exit(1)


NOISY_LOGGERS = ("pydicom", "PIL")


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and final results."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = _state["debug"] or debug
    _state["quiet"] = quiet
    if _state["debug"]:
        import warnings

        warnings.simplefilter("default")
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    import warnings

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Library deprecation chatter (torch.jit, fastai) is not actionable for nfx users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Decoder and library chatter (pydicom's plugin failures, torch/fastai/timm UserWarnings)
    # reaches users as nfx's own bad-file reasons and notes; --debug shows it again.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|torch|fastai|timm|PIL)(\.|$)")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        code = app(standalone_mode=False, prog_name="nfx")
    except Exception as e:  # a command-line usage error (Click's UsageError: bad value, unknown option)
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `nfx`: the help, not an error
            print(e.format_message())
            sys.exit(0)
        cmd = getattr(getattr(e, "ctx", None), "command_path", "nfx")
        # one line, exit code 1, like every other error (Click prints several lines and exits 2)
        try:
            _fail(f"{e.format_message().rstrip('.')}; see `{cmd} --help`")
        except typer.Exit:
            sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
