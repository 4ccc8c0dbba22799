"""Users' input files: registered as theirs when uploaded or carried in a submission."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import File, FileKind


def register_input(session: Session, owner: str, name: str, sha256: str, size: int) -> File:
    """The owner's input row for this content under this name (made once)."""
    row = session.scalar(
        select(File).where(
            File.owner == owner,
            File.sha256 == sha256,
            File.kind == FileKind.INPUT,
            File.name == name,
        )
    )
    if row is None:
        row = File(sha256=sha256, size=size, name=name, owner=owner, kind=FileKind.INPUT)
        session.add(row)
        session.flush()
    return row
