"""Exceptions of the harvester service, one module for all of them.

Service functions raise these; the API turns them into 4xx replies with a
JSON body (see :mod:`harvester.api.app`), the CLIs into a message and a
non-zero exit.
"""


class HarvesterError(Exception):
    """Base class; ``status_code`` is the HTTP status the API answers with."""

    status_code = 400


class ConfigError(HarvesterError):
    """The settings file or a queue definition is invalid."""


class InvalidRequest(HarvesterError):
    """A request that can never succeed as sent (bad parameter values)."""

    status_code = 400


class Unauthorized(HarvesterError):
    """No token, or a token that is unknown or revoked."""

    status_code = 401


class Forbidden(HarvesterError):
    """A valid token whose owner may not do this."""

    status_code = 403


class NotFoundError(HarvesterError):
    """The task, job, file or queue does not exist (or is not visible to the caller)."""

    status_code = 404


class Conflict(HarvesterError):
    """The request does not fit the current state (e.g. killing a finished task)."""

    status_code = 409


class PayloadTooLarge(HarvesterError):
    """An upload over the configured size limit."""

    status_code = 413


class DatabaseUnavailable(HarvesterError):
    """The database cannot be reached or is saturated; nothing was changed, retry later."""

    status_code = 503


class ProviderError(HarvesterError):
    """A batch-system command failed; carries what the command said."""

    status_code = 502


class ImageError(HarvesterError):
    """An image could not be built, imported or found."""


class RegistryUnavailable(ImageError):
    """The image registry cannot be reached now (down, refusing connections, 5xx):
    jobs that need the image wait, and the pull is tried again."""

    status_code = 503


class RegistryRefused(ImageError):
    """The registry answered that the image cannot be had (unknown repository, tag or
    digest, a digest that does not match, access denied): trying again cannot help."""
