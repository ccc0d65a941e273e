"""The heavy libraries that several faceops modules use (numpy, OpenCV, the docker SDK, boto3 and
botocore) as names a module can import at its top without loading them: the library is imported on
the first attribute read, so `faceops --help` and the command modules stay light while faceops
modules still import each other at the top. A library only one module uses is imported inside
that module's functions instead (onnxruntime in inference/models.py, faiss in inference/index.py,
matplotlib in jobs/plot.py, ...)."""
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
        try:
            value = getattr(self.__module, attr)
        except AttributeError:  # a submodule its package does not import itself (botocore.config)
            value = importlib.import_module(f"{self.__name}.{attr}")
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        state = "loaded" if self.__module is not None else "not loaded yet"
        return f"<lazy module {self.__name!r} ({state})>"


numpy: Any = LazyModule("numpy")
cv2: Any = LazyModule("cv2")
docker: Any = LazyModule("docker")
boto3: Any = LazyModule("boto3")
botocore: Any = LazyModule("botocore")
