"""Errors raised for bad user input. Each names the offending input and what is allowed."""


class PersonaError(ValueError):
    """Base class: a bad grid, model, layer, position or option."""


class GridError(PersonaError):
    """A grid file or grid name that cannot be used."""


class ModelError(PersonaError):
    """A model that cannot be loaded or has an unsupported layout."""


class SelectionError(PersonaError):
    """A layer, position, condition or cell that does not exist."""


class RemoteFailure(PersonaError):
    """A remote run that kept failing (network or server) after its retries."""


class ResultFileError(PersonaError):
    """A result file (netCDF) that cannot be read: empty, truncated, or not a result at all."""


class OutputError(PersonaError):
    """An output path that cannot be written, is in use by another run, or holds another result."""


class DataFileError(PersonaError):
    """A calibration, evaluation or persona-set file that cannot be used (names the file and row)."""
