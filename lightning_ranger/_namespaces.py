"""Lightning's classes under both of its import names.

Lightning ships the same classes as ``lightning.pytorch`` and, in the standalone
``pytorch-lightning`` distribution, as ``pytorch_lightning``. They are distinct classes, so an
``isinstance`` check against one namespace misses objects built from the other. Every check of a
Lightning class in this package goes through :func:`lightning_isinstance`.

``pytorch_lightning`` is never imported here: an object can only come from it once the user has
imported it, so it is looked up in ``sys.modules``.
"""

import importlib
import sys
from types import ModuleType
from typing import Any

_NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


def lightning_classes(path: str) -> tuple[type, ...]:
    """The classes that ``path`` names in each Lightning namespace that is imported.

    Args:
        path: the class's path below the namespace, for example ``"strategies.FSDPStrategy"``
            or ``"LightningModule"``.

    Raises:
        AttributeError: if ``lightning.pytorch`` has no such class (a misspelt path).

    Example::

        >>> from lightning.pytorch.strategies import FSDPStrategy
        >>> FSDPStrategy in lightning_classes("strategies.FSDPStrategy")
        True
    """
    module_path, _, name = path.rpartition(".")
    primary, *others = _NAMESPACES
    classes = [getattr(_module(primary, module_path), name)]
    for namespace in others:
        if namespace in sys.modules:  # a release that lacks the class has no objects of it
            found = getattr(_module(namespace, module_path), name, None)
            if isinstance(found, type):
                classes.append(found)
    return tuple(classes)


def _module(namespace: str, module_path: str) -> ModuleType:
    return importlib.import_module(f"{namespace}.{module_path}" if module_path else namespace)


def lightning_isinstance(obj: Any, *paths: str) -> bool:
    """Whether ``obj`` is an instance of any class that ``paths`` name, in either namespace.

    Example::

        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> lightning_isinstance(ModelCheckpoint(), "callbacks.ModelCheckpoint")
        True
        >>> lightning_isinstance(object(), "callbacks.ModelCheckpoint", "loggers.TensorBoardLogger")
        False
    """
    return any(isinstance(obj, lightning_classes(path)) for path in paths)
