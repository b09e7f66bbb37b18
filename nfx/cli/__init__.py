"""The `nfx` command: parse options → RunConfig → nfx.api call → print. cli/app.py holds the
Typer app, the error boundary and `main`; the commands live in cli/train.py (finetune,
compare), cli/runs.py (evaluate, explain, export, predict) and cli/data.py (inspect,
sample-data), imported here so that they register on the app.

Only this module and nfx.console know typer/rich. NfxError becomes a one-line message and exit
code 1; any other exception too (no traceback: tracebacks can carry patient data in locals)
unless --debug (or NFX_DEBUG=1) is given. Nothing heavy is imported at module level, so
`nfx --help` answers fast.
"""

from nfx.cli.app import app, boundary, main, printer

# the commands register themselves on `app` when their modules are imported (in help order)
# isort: off
from nfx.cli import train  # noqa: E402,F401
from nfx.cli import runs  # noqa: E402,F401
from nfx.cli import data  # noqa: E402,F401
# isort: on

__all__ = ["app", "boundary", "main", "printer"]

if __name__ == "__main__":
    main()
