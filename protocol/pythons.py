"""Which Python an image runs, and whether a client's pickles can be read by it.

A function pickled by value (cloudpickle) carries its code object, whose format
changes with every minor Python version: 3.11 bytecode does not load in 3.12.
The failure is then a ``WorkerLost`` or an ``unknown opcode`` deep in a remote
log (Globus Compute's longest-standing problem). hpcaf records each image's
Python when the image enters the cache, and refuses a submission that could
not be read before anything is sent.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

VERSION_PATTERN = re.compile(r"^\d+\.\d+(\.\d+)?$")


class ImagePython(BaseModel):
    """An image's Python, as found in its root filesystem."""

    executable: str | None = None
    """The ``python3`` first on the image's ``PATH`` (inside the image); ``None``: no Python."""
    version: str | None = Field(None, description="major.minor, e.g. 3.11")
    cloudpickle: str | None = Field(None, description="cloudpickle's version; None: absent")


class ClientPython(BaseModel):
    """The submitting process's Python and serializer, sent with a function task."""

    version: str = Field(pattern=VERSION_PATTERN.pattern, max_length=16)
    serializer: str = Field(pattern=r"^(cloudpickle|source)$")
    cloudpickle: str | None = Field(None, max_length=32)


def minor(version: str) -> str:
    """``3.11.2`` → ``3.11``."""
    return ".".join(version.split(".")[:2])


def incompatibility(image_name: str, image: ImagePython, client: ClientPython) -> str | None:
    """Why the image cannot run the client's functions, or ``None`` when it can.

    By value (cloudpickle), the image needs cloudpickle and the client's minor
    Python version. By source, any Python 3 reads plain pickles of the arguments
    (protocol 4), so only a Python is needed.
    """
    if image.version is None:
        return f"image {image_name!r} has no python3 on its PATH: it cannot run Python functions"
    if client.serializer == "source":
        return None
    if image.cloudpickle is None:
        return (
            f"image {image_name!r} (Python {image.version}) has no cloudpickle: install it in "
            "the image (pip install cloudpickle), or send plain functions by source "
            "(serializer='source')"
        )
    if minor(client.version) != minor(image.version):
        return (
            f"your Python is {minor(client.version)} but image {image_name!r} runs Python "
            f"{minor(image.version)}: functions pickled by value (cloudpickle) carry bytecode "
            "that only the same minor version reads. Use an image with Python "
            f"{minor(client.version)}, run the client under Python {minor(image.version)}, "
            "or send plain functions by source (serializer='source')"
        )
    return None
