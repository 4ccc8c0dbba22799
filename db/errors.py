"""Exceptions raised by the database layer.

Callers catch these by type; nothing here returns ``None`` to mean "failed".
"""


class DatabaseError(Exception):
    """Base class of hpcaf's database-layer errors."""


class IllegalTransition(DatabaseError):
    """A state change that the transition tables in :mod:`db.states` do not allow."""


class NotFound(DatabaseError):
    """A row that was asked for by id does not exist."""
