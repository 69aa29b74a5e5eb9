"""webdataset's tar writer and reader, imported without torch.

`import webdataset` imports torch when it is installed (2-3 s, and once more in every worker
process) although the writer and tar iterators never use it; webdataset has stand-ins for when
torch is missing. `alexnet-prep` must start fast and run on boxes without torch, so if torch is
not loaded yet we hide it while webdataset imports. Caveat: in such a process webdataset's
`WebDataset` is then not a torch `IterableDataset`; code that feeds it to a torch `DataLoader`
(the pipeline benchmark) imports torch first.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def _import_webdataset() -> ModuleType:
    if "torch" in sys.modules or "webdataset" in sys.modules:
        return importlib.import_module("webdataset")
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        return importlib.import_module("webdataset")
    finally:
        del sys.modules["torch"]


_wds = _import_webdataset()
TarWriter = _wds.TarWriter
tar_file_iterator = _wds.tariterators.tar_file_iterator
group_by_keys = _wds.tariterators.group_by_keys
