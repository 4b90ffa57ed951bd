"""Fingerprints of Python functions given as objects (a notebook cell's), for the resume identity.

A function defined in a cell has no 'module:function' name another process could import, so
what identifies it is what it computes: its source (or, without one, its bytecode), the
values it closes over, the globals it reads (a design matrix from another cell, a helper
function, recursively) and its defaults. Re-running the same cell in a new kernel gives the
same fingerprint; editing the function or the matrix it reads gives another, and results it
made are then not resumed. File names and line numbers are left out on purpose: a notebook's
cell files are named anew in every kernel.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
import textwrap
import types
from collections.abc import Callable
from typing import Any

import numpy as np

#: Objects nested deeper than this in a function's closure or globals are named, not hashed.
MAX_DEPTH = 8


def function_fingerprint(func: Callable[..., Any]) -> str:
    """A 16-hex-digit hash of what `func` computes (see the module docstring)."""
    digest = hashlib.sha256()
    _Walk(digest, getattr(func, "__module__", None)).function(func, depth=0)
    return digest.hexdigest()[:16]


def function_name(func: Callable[..., Any]) -> str:
    """'module:qualname', as a study file would name it (for messages and manifests)."""
    module = getattr(func, "__module__", None) or "?"
    return f"{module}:{getattr(func, '__qualname__', type(func).__name__)}"


class _Walk:
    """One fingerprint's walk: the digest, the objects seen (cycles), the user's module."""

    def __init__(self, digest: Any, module: str | None):
        self.digest = digest
        self.seen: set[int] = set()
        #: Functions of these modules are the user's code, hashed in full where they are
        #: referenced; others (numpy's, an installed package's) are named, not walked.
        self.user_modules = {"__main__", module}

    def function(self, func: Any, depth: int) -> None:
        digest = self.digest
        if id(func) in self.seen:
            digest.update(b"<recursion>")
            return
        self.seen.add(id(func))
        target = inspect.unwrap(func)
        if isinstance(target, functools.partial):
            digest.update(b"partial")
            self.function(target.func, depth + 1)
            self.value((target.args, target.keywords), depth + 1)
            return
        code = getattr(target, "__code__", None)
        if code is None:  # an instance with __call__, a builtin: its type and its state
            digest.update(function_name(type(target)).encode())
            call = type(target).__dict__.get("__call__")
            if call is not None and hasattr(call, "__code__"):
                self.function(call, depth + 1)
            self.value(getattr(target, "__dict__", None), depth + 1)
            return
        digest.update(_source_or_bytecode(target, code))
        self.value((target.__defaults__, target.__kwdefaults__), depth + 1)
        for cell in target.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned after the function was made)
                contents = "<empty cell>"
            self.value(contents, depth + 1)
        module_globals = getattr(target, "__globals__", {})
        for name in sorted(_global_names(code)):
            if name in module_globals:
                digest.update(name.encode())
                self.value(module_globals[name], depth + 1)

    def value(self, value: Any, depth: int) -> None:
        """Feed a value the function depends on into the digest, the same in every process."""
        digest = self.digest
        if depth > MAX_DEPTH:
            digest.update(f"<{type(value).__qualname__}>".encode())
        elif value is None or isinstance(value, bool | int | float | complex | str | bytes):
            digest.update(repr(value).encode())
        elif isinstance(value, np.ndarray):
            digest.update(f"ndarray{value.dtype.str}{value.shape}".encode())
            digest.update(_pickled(value) if value.dtype == object else
                          np.ascontiguousarray(value).tobytes())  # fmt: skip
        elif isinstance(value, np.generic):
            digest.update(repr(value.item()).encode())
        elif isinstance(value, types.ModuleType):
            digest.update(f"module {value.__name__}".encode())
        elif isinstance(value, type):
            digest.update(f"class {function_name(value)}".encode())
        elif isinstance(value, list | tuple | set | frozenset):
            items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
            digest.update(f"{type(value).__name__}{len(items)}".encode())
            for item in items:
                self.value(item, depth + 1)
        elif isinstance(value, dict):
            digest.update(f"dict{len(value)}".encode())
            for key in sorted(value, key=repr):
                self.value(key, depth + 1)
                self.value(value[key], depth + 1)
        elif callable(value):
            if getattr(value, "__module__", None) in self.user_modules:
                self.function(value, depth + 1)
            else:
                digest.update(f"function {function_name(value)}".encode())
        else:
            digest.update(_pickled(value))


def _source_or_bytecode(func: Any, code: types.CodeType) -> bytes:
    try:
        return textwrap.dedent(inspect.getsource(func)).encode()
    except (OSError, TypeError):
        return _bytecode(code)


def _bytecode(code: types.CodeType) -> bytes:
    """The instructions, names and constants of a code object (nested ones too), without its
    file name and line numbers."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        nested = isinstance(const, types.CodeType)
        parts.append(_bytecode(const) if nested else repr(const).encode())
    return b"\0".join(parts)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _pickled(value: Any) -> bytes:
    """Other objects (a DataFrame, a dataclass): their pickle, which is deterministic for
    plain data; an object that cannot be pickled is named by its type only."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return f"<unpicklable {type(value).__qualname__}>".encode()
