"""Library errors. The CLI turns each into a one-line ``click.ClickException``: no traceback."""


class WbcError(Exception):
    """A problem the user can fix: the message names the file and what is wrong."""


class ConfigError(WbcError):
    """A config file or ``--set`` override is invalid."""


class DataError(WbcError):
    """Input data (labels.csv, images, archives, folders) cannot be used."""


class BadImage(DataError):
    """One image cannot be read; batch commands report it and go on."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelError(WbcError):
    """A model file is missing, invalid or unsafe to load."""
