"""Patching a name of the book pipeline in tests, now that :mod:`rnorm.book` is a package."""


def patch_book(monkeypatch, name, value):
    """Replace ``name`` in :mod:`rnorm.book` and in each of its modules that holds it (the package re-exports
    its modules' names, and a module calls its own binding), as patching the one module ``rnorm/book.py`` did."""
    import sys
    for modname, mod in list(sys.modules.items()):
        if (modname == "rnorm.book" or modname.startswith("rnorm.book.")) and hasattr(mod, name):
            monkeypatch.setattr(mod, name, value)
