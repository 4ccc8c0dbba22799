"""Users' input files: registered as theirs when uploaded or carried in a submission,
and named in a submission only by someone who holds them."""

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


def owner_holds(session: Session, owner: str, sha256: str) -> bool:
    """Whether ``owner`` holds this content as one of their files (an upload, an input
    carried in a submission, an output or log of their tasks).

    Files are stored once per content, so a checksum alone would name anyone's file:
    a submission may name only what its owner holds, and a client asking whether to
    upload learns nothing about other users' files.
    """
    found = session.scalar(
        select(File.id).where(File.sha256 == sha256, File.owner == owner).limit(1)
    )
    return found is not None
