"""User code named on the command line: ``path/to/file.py:name`` or ``package.module:name`` (reward functions, tools,
environments), loaded with one-line errors that say which flag to fix."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .errors import UserError, first_line


def split_spec(spec: str) -> tuple[str, str]:
    """``where:name`` split at the last colon (a Windows drive's colon stays in ``where``)."""
    where, _, name = spec.rpartition(":")
    return where, name


def absolute_spec(spec: str) -> str:
    """``file.py:name`` with the file's path made absolute, for a run record read from elsewhere (eval, resume)."""
    where, name = split_spec(spec)
    if where.endswith(".py") and Path(where).expanduser().is_file():
        return f"{Path(where).expanduser().resolve()}:{name}"
    return spec


def load_module(where: str, what: str, flag: str):
    """The module a spec names: a .py file (run as a module of its own) or an importable module."""
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise UserError(f"{what} file not found: {where}; check the path in {flag}")
        name = f"unitune_{what}_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # as an import does: dataclasses and pickling look their module up there
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise UserError(f"{what} file {where} failed to import ({first_line(err)}); fix it") from None
        return module
    try:
        return importlib.import_module(where)
    except ImportError as err:
        raise UserError(f"cannot import {what} module '{where}' ({first_line(err, typed=False)}); check "
                        f"{flag}") from None
    except Exception as err:
        raise UserError(f"{what} module '{where}' failed to import ({first_line(err)}); fix it") from None


def load_named(where: str, name: str, what: str, flag: str, kind: str = "function"):
    """The callable ``name`` of the module at ``where``; a missing one lists what is there."""
    module = load_module(where, what, flag)
    found = getattr(module, name, None)
    if not callable(found):
        there = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        plural = "classes" if kind == "class" else f"{kind}s"
        raise UserError(f"no {kind} '{name}' in {where}; {plural} there: {', '.join(there) or 'none'}")
    return found
