"""Turning user errors into one readable line instead of a stack trace."""

from __future__ import annotations

from hydra.errors import InstantiationException


def _user_types() -> tuple[type[BaseException], ...]:
    from sparsetrain.data import DataUnavailableError

    return (ValueError, FileNotFoundError, DataUnavailableError)


def one_line_error(error: BaseException) -> str | None:
    """The message to show for a user error (bad value, unknown option, missing data), else None.

    Hydra wraps exceptions raised by constructors in `InstantiationException`; the user's problem is the
    cause, so that is what is shown.
    """
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, InstantiationException):
        return str(error).splitlines()[0]
    if isinstance(error, _user_types()):
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None
