"""User-facing errors: anything raised as `RecipeError` or `UserError` is printed as one line, no traceback."""


class UserError(Exception):
    """A problem the user can fix (bad path, missing data, corrupt file). The CLI prints it and exits 1."""

    exit_code = 1


class RecipeError(UserError):
    """An invalid recipe or override. The CLI prints it and exits 2."""

    exit_code = 2


class ExportMismatch(UserError):
    """An exported model's outputs differ from PyTorch's; the artefact is not kept."""
