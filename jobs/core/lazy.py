"""numpy and OpenCV as names a module can import at its top without loading them: the library is
imported on the first attribute read, so `faceops --help` and the command modules stay light while
the face toolkit, galleries and packers still import each other at the top."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it when an attribute is first read; each
    attribute read is then cached on the stand-in, so later reads cost what a module's do."""

    def __init__(self, name: str) -> None:
        self.__name = name
        self.__module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self.__module is None:
            self.__module = importlib.import_module(self.__name)
        value = getattr(self.__module, attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        state = "loaded" if self.__module is not None else "not loaded yet"
        return f"<lazy module {self.__name!r} ({state})>"


numpy: Any = LazyModule("numpy")
cv2: Any = LazyModule("cv2")
