"""Reading a PyTorch state dict (``torch.save`` of a dict of tensors) without torch.

    state = torch_state_dict.read_state_dict("pt_inception-2015-12-05-6726825d.pth")
    state["fc.weight"]  # np.ndarray [1008, 2048] float32

Both of torch.save's formats are read: the zip archive (torch >= 1.6: ``<name>/data.pkl`` plus
one raw little-endian file per storage, ``<name>/data/<key>``) and the legacy stream (pickles of
a magic number, protocol 1001 and system info, the object, its storage keys, then each storage
as an int64 element count and its bytes). The object's pickle is read by a restricted unpickler
that resolves only ``collections.OrderedDict``, torch's tensor rebuild functions
(``torch._utils._rebuild_tensor_v2`` and kin) and torch's storage types by name, each mapped to
numpy code here; any other global is refused by name, so nothing in the file is ever executed.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001  # torch/serialization.py PROTOCOL_VERSION


def _rebuild_tensor(storage: np.ndarray, storage_offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *unused: Any) -> np.ndarray:
    """torch._utils._rebuild_tensor(_v2): elements offset + sum_i index_i stride_i of storage."""
    index = np.asarray(storage_offset)
    for axis, (n, s) in enumerate(zip(size, stride)):
        index = index[..., None] + np.arange(n) * s if axis else index + np.arange(n) * s
    if index.size and (index.min() < 0 or index.max() >= storage.size):
        raise ValueError(f"a tensor of size {tuple(size)} (stride {tuple(stride)}, offset "
                         f"{storage_offset}) reaches outside its storage of {storage.size}")
    return np.asarray(storage[index.reshape(tuple(size))])


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
    """torch._utils._rebuild_parameter: an nn.Parameter is its data here."""
    return data


class _StorageType:
    """A torch storage class (``torch.FloatStorage`` ...) reduced to its numpy dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED``; storages come from ``read_storage``."""

    def __init__(self, file: BinaryIO, path: str, read_storage=None, *, scan_only: bool = False):
        super().__init__(file)
        self._path, self._read_storage, self._scan_only = path, read_storage, scan_only

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name} in {self._path!r}: a state dict holds only "
                f"OrderedDicts and tensors (torch._utils._rebuild_tensor_v2, storage types)")
        if self._scan_only and module == "torch._utils":
            return lambda *args: None  # a first pass that only collects the storages' dtypes
        return _ALLOWED[module, name]

    def persistent_load(self, pid: Any) -> np.ndarray:
        if self._read_storage is None or not isinstance(pid, tuple) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r} in {self._path!r}")
        storage_type, key, _, numel, *view = pid[1:]
        if not isinstance(storage_type, _StorageType) or any(v is not None for v in view):
            raise pickle.UnpicklingError(f"unsupported storage {pid!r} in {self._path!r}")
        return self._read_storage(str(key), storage_type.dtype, int(numel))


def _from_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path!r} is a zip archive but not one torch.save wrote (expected "
                             f"one <name>/data.pkl, found {pickles})")
        prefix = pickles[0].removesuffix("data.pkl")

        def read_storage(key, dtype, numel):
            data = archive.read(f"{prefix}data/{key}")
            return np.frombuffer(data, dtype.newbyteorder("<"), count=numel)

        with archive.open(pickles[0]) as f:
            return _Unpickler(f, path, read_storage).load()


def _from_legacy_stream(path: str, f: BinaryIO) -> Any:
    header = [_Unpickler(f, path).load() for _ in range(3)]  # magic, protocol, system info
    if header[:2] != [_LEGACY_MAGIC, _LEGACY_PROTOCOL]:
        raise ValueError(f"{path!r} is neither a zip nor a legacy torch.save file")
    dtypes = {}
    _Unpickler(f, path, lambda key, dtype, numel: dtypes.setdefault(key, dtype),
               scan_only=True).load()
    storages = {}
    for key in _Unpickler(f, path).load():
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = np.dtype(dtypes[key]).newbyteorder("<")
        storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype, count=numel)
    f.seek(0)
    # Second pass, now that the storages are read: rebuild the tensors from them.
    for _ in range(3):
        _Unpickler(f, path).load()
    return _Unpickler(f, path, lambda key, dtype, numel: storages[key][:numel]).load()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A flat ``torch.save``'d state dict as numpy arrays, without torch.

    Args:
      path: a ``.pth`` / ``.pt`` file of a dict of tensor name -> tensor, in either format.

    Returns:
      name -> array with torch's dtype, shape and values (bfloat16 as ``ml_dtypes.bfloat16``).

    Raises:
      pickle.UnpicklingError: the file asks for any global but a state dict's, named.
      ValueError: not a torch.save file, or not a flat dict of tensors.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        state = _from_zip(path)
    else:
        with open(path, "rb") as f:
            state = _from_legacy_stream(path, f)
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
        raise ValueError(f"{path!r} does not hold a flat dict of tensor name -> tensor")
    return {k: np.array(v) for k, v in state.items()}
