"""How calls travel to ``transforms/pyfunc.py`` and how their results come back.

Two strategies:

- ``cloudpickle`` (default): functions and arguments by value, so functions
  defined in a notebook cell, in ``__main__`` or in the user's own modules work.
  A function's module is pickled by value unless it is installed (under a
  ``site-packages`` or the standard library), where the image is expected to
  have it too (``pyhf.infer.hypotest`` travels by reference). Needs the same
  minor Python version on both sides (checked at submission).
- ``source``: a plain module-level function travels as its source text, the
  arguments as plain pickles (protocol 4), so any Python 3 image runs it.

A batch of calls is one pickle, so an argument shared by the calls (one
workspace for every patch) is sent once.
"""

from __future__ import annotations

import inspect
import io
import pickle
import sys
import sysconfig
import textwrap
import types
from pathlib import Path
from typing import Any

from hpcaf.errors import PayloadTooLarge, SerializationError
from protocol.pythons import ClientPython

FORMAT = 2
PROTOCOL = 4
SERIALIZERS = ("cloudpickle", "source")
Call = tuple[Any, tuple[Any, ...], dict[str, Any]]


def client_python(serializer: str) -> ClientPython:
    """This process's Python and serializer, as a function task declares them."""
    version = ".".join(str(v) for v in sys.version_info[:3])
    if serializer == "cloudpickle":
        import cloudpickle

        return ClientPython(
            version=version, serializer=serializer, cloudpickle=cloudpickle.__version__
        )
    return ClientPython(version=version, serializer=serializer, cloudpickle=None)


def _installed_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib")]


def _by_value(function: Any) -> None:
    """Pickle the function's module by value unless it is installed (module docstring)."""
    import cloudpickle

    name = getattr(function, "__module__", None)
    module = sys.modules.get(name) if name else None
    if module is None or name == "__main__" or name in sys.builtin_module_names:
        return
    file = getattr(module, "__file__", None)
    if file is None:
        return
    where = Path(file).resolve()
    if any(where.is_relative_to(root) for root in _installed_roots()):
        return
    cloudpickle.register_pickle_by_value(module)


class CallsWriter:
    """The calls file of one batch, written call by call as ``submit`` is called.

    One pickler with one memo for the whole batch: an object shared by several
    calls (the workspace passed to every patch's fit) is written once, and a call
    is pickled once, when it is submitted, which is also the check that it can
    be sent. The file is a plain pickle of a header, then one pickle per call
    (``transforms/pyfunc.py`` loads them with one unpickler, in order).
    """

    def __init__(self, serializer: str, python: ClientPython) -> None:
        self.serializer = serializer
        self.python = python
        self.count = 0
        self._functions: dict[Any, tuple[str, tuple[str, str]]] = {}
        """Source strategy: each function's key in the file, and its (source, name)."""
        self._calls: list[Call] = []
        self._new_pickler()

    def _new_pickler(self) -> None:
        self._stream = io.BytesIO()
        if self.serializer == "cloudpickle":
            import cloudpickle

            self._pickler: pickle.Pickler = cloudpickle.Pickler(self._stream, protocol=PROTOCOL)
        else:
            self._pickler = pickle.Pickler(self._stream, protocol=PROTOCOL)

    @property
    def size(self) -> int:
        return self._stream.tell()

    def add(self, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> int:
        """Append one call; its size in bytes. :class:`SerializationError` or
        :class:`PayloadTooLarge` say what is wrong, and leave the batch as it was."""
        if not callable(function):
            raise SerializationError(f"{function!r} is not callable")
        start = self._stream.tell()
        try:
            if self.serializer == "cloudpickle":
                _by_value(function)
                self._pickler.dump((function, args, kwargs))
            else:
                key = self._function_key(function)
                self._pickler.dump((key, args, kwargs))
        except SerializationError:
            self._rewrite()
            raise
        except Exception as exc:
            self._rewrite()
            raise SerializationError(
                f"cannot send {_name(function)}: {type(exc).__name__}: {exc} (its arguments "
                "and what it refers to must pickle; a socket, a generator or an open file "
                "cannot)"
            ) from exc
        size = self._stream.tell() - start
        if size > limit:
            self._rewrite()
            raise PayloadTooLarge(
                f"{_name(function)}: the call is {size} bytes pickled, over the limit of "
                f"{limit} bytes (max_call_bytes); pass large data as a file, or raise the limit"
            )
        self._calls.append((function, args, kwargs))
        self.count += 1
        return size

    def _function_key(self, function: Any) -> str:
        known = self._functions.get(function)
        if known is None:
            known = (f"f{len(self._functions)}", (function_source(function), function.__name__))
            self._functions[function] = known
        return known[0]

    def _rewrite(self) -> None:
        """A call failed half-way: its bytes and memo entries would corrupt the batch, so
        the batch is pickled again from the calls that went in."""
        calls, self._calls, self.count = self._calls, [], 0
        self._new_pickler()
        for function, args, kwargs in calls:
            self.add(function, args, kwargs, limit=1 << 62)

    def getvalue(self) -> bytes:
        header: dict[str, Any] = {
            "format": FORMAT,
            "serializer": self.serializer,
            "python": self.python.version,
            "count": self.count,
        }
        if self.serializer == "source":
            header["functions"] = dict(self._functions.values())
        return pickle.dumps(header, protocol=PROTOCOL) + self._stream.getvalue()


def function_source(function: Any) -> str:
    """A plain module-level function's source (the ``source`` strategy), or why not."""
    if not isinstance(function, types.FunctionType) or function.__name__ == "<lambda>":
        raise SerializationError(
            f"{_name(function)}: only plain functions (def, at module level) travel by source"
        )
    if function.__code__.co_freevars:
        raise SerializationError(
            f"{_name(function)} is a closure (it uses {', '.join(function.__code__.co_freevars)}"
            " from an enclosing function): it cannot travel by source; use cloudpickle"
        )
    try:
        return textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as exc:
        raise SerializationError(f"{_name(function)}: its source is not available ({exc})") from exc


def read_results(data: bytes) -> list[dict[str, Any]]:
    """The records of a job's ``results.pkl``."""
    records = pickle.loads(data)
    if not isinstance(records, list):
        raise ValueError("results.pkl does not hold a list of records")
    return records


def _name(function: Any) -> str:
    return getattr(function, "__qualname__", None) or repr(function)
