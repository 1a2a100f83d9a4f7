"""Which checkout the pipeline works on: the one the working directory is in (:func:`project_root`),
not the one the package is installed from, and that this process runs that checkout's own ``rnorm``."""
from __future__ import annotations

import os
from pathlib import Path

from .._validate import ConfigError


#: What makes a folder a project checkout: the book's configuration and table of contents, and the notebooks.
PROJECT_MARKERS = ("_config.yml", "_toc.yml", "notebooks/")


_PACKAGE = Path(__file__).resolve().parents[1]  # the rnorm package this process imported


def find_root(start=None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) that holds
    :data:`PROJECT_MARKERS`, else None."""
    here = Path(start if start is not None else os.getcwd()).absolute()
    for folder in (here, *here.parents):
        if all((folder / m.rstrip("/")).is_dir() if m.endswith("/") else (folder / m).is_file()
               for m in PROJECT_MARKERS):
            return folder
    return None


def project_root(*, code: bool = True) -> Path:
    """The checkout the pipeline works on: the one the working directory is in (:func:`find_root`),
    never the one the package happens to be installed from (with a shared virtual environment
    those differ). Outside a checkout, a :class:`ConfigError` says so.

    ``code=True`` (everything but rendering the HTML) also requires that this process runs the
    checkout's own ``rnorm`` package: notebooks are executed in the checkout and import its
    ``rnorm``, their keys hash its modules, and training runs this process's code, so two
    checkouts' code would otherwise mix without a word."""
    root = find_root()
    if root is None:
        raise ConfigError(f"{Path.cwd()} is not inside an rnorm checkout (no folder at or above it holds "
                          f"{', '.join(PROJECT_MARKERS)}); cd into the checkout to build, run or plan.")
    if code and (root / "rnorm").resolve() != _PACKAGE:
        raise ConfigError(f"this checkout is {root}, but the rnorm package running is {_PACKAGE} (another "
                          f"checkout, or an installed copy): its notebooks would run one code and training "
                          f"another. Run `python -m rnorm.cli ...` in {root}, or set PYTHONPATH={root}.")
    return root
