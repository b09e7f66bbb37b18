"""Error types. Every message says what went wrong, where, and what to do next.

They are raised anywhere and handled once, at the CLI boundary (exit code 1, one line,
no traceback unless --debug).
"""

import errno


class NfxError(Exception):
    """Base class: a problem the user can fix. The message is kept apart from `args`: fastai
    rewrites the args of an exception raised in a callback ("Exception occured in `X` when
    calling event ...") and the user must see nfx's own one line."""

    def __init__(self, *args: object):
        super().__init__(*args)
        self.message = str(args[0]) if len(args) == 1 else super().__str__()

    def __str__(self) -> str:
        return self.message


class DataError(NfxError):
    """The data folder, a file in it, or a labels file is unusable."""


class ConfigError(NfxError):
    """An option or config file value is invalid."""


class ModelError(NfxError):
    """The architecture or its weights cannot be used."""


class RunError(NfxError):
    """A run folder is missing or incomplete."""


class TrainingError(NfxError):
    """Training cannot continue (e.g. the loss became NaN)."""


class ExportError(NfxError):
    """An export could not be produced or failed verification."""


class MachineError(NfxError):
    """The machine, not the data: a full disk, a read-only or forbidden output folder."""


# errno values that mean "the machine", never "this file is bad"
MACHINE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES}


class BadFileError(DataError):
    """One file cannot be used; `reason` is short and names the fix where there is one."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def short_reason(e: BaseException, limit: int = 160, with_type: bool = False) -> str:
    """An exception as one short line for a user-facing message: the first line of its text
    (two when the first only introduces the next, as pydicom's "exceptions were raised by all
    available plugins:" does), the type name when there is no text, cut to `limit` characters.
    The one place nfx turns a foreign exception into words (no traceback, no locals)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    text = f"{type(e).__name__}: {text}" if with_type else text
    return text[:limit]

