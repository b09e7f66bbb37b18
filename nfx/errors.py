"""Error types. Every message says what went wrong, where, and what to do next.

They are raised anywhere and handled once, at the CLI boundary (exit code 1, one line,
no traceback unless --debug).
"""


class NfxError(Exception):
    """Base class: a problem the user can fix."""


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


class BadFileError(DataError):
    """One file cannot be used; `reason` is short and names the fix where there is one."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
