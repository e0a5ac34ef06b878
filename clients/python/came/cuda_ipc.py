"""Maps rankd's flat buffers in GPU memory (CUDA IPC) into this process as torch tensors.

A SharedBuffer (rank.proto) with device >= 0 carries the cudaIpcMemHandle_t of a buffer
that `came-rankd --device N` allocated on CUDA device N (ordinals as the trainer's
CUDA_VISIBLE_DEVICES numbers them: came-launch passes it on unchanged). The trainer opens
the handle with cudaIpcOpenMemHandle (ctypes on the libcudart that torch loaded), and each
view is a torch tensor over the mapped device memory through __cuda_array_interface__,
with a storage of its own (as shm.py's views, for safetensors' sake). The mapping is closed
by close(), which rankd needs before it frees the memory on Detach: views handed out are
invalid afterwards (ShardedCAME.close() copies parameters and gradients out first).

Nothing here has run on a GPU yet (docs/PERF.md, the GPU checks owed).
"""

import ctypes
import glob
import os
import threading

import torch

from .shm import torch_dtype

_IPC_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)
_LAZY_ENABLE_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess
# torch dtype -> __cuda_array_interface__ typestr (bf16 has none: mapped as int16, viewed).
_TYPESTR = {torch.float32: "<f4", torch.float16: "<f2", torch.bfloat16: "<i2"}



class _IpcHandle(ctypes.Structure):
    """cudaIpcMemHandle_t, passed by value (a bare ctypes array would pass a pointer)."""
    _fields_ = [("reserved", ctypes.c_char * _IPC_HANDLE_BYTES)]


_lock = threading.Lock()
_cudart = None


def _loaded_cudart_paths():
    """Returns the libcudart files mapped into this process (torch's, once CUDA is up)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isfile(p))


def cudart():
    """Returns libcudart as a ctypes library: the one torch loaded, else the first of the
    usual sonames; RuntimeError naming what was tried when there is none."""
    global _cudart
    with _lock:
        if _cudart is not None:
            return _cudart
        if torch.cuda.is_available():
            torch.cuda.init()  # loads torch's cudart, found below in /proc/self/maps
        candidates = _loaded_cudart_paths()
        torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        candidates += sorted(glob.glob(os.path.join(torch_lib, "libcudart*.so*")))
        candidates += ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"]
        for name in candidates:
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            lib.cudaIpcOpenMemHandle.restype = ctypes.c_int
            lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _IpcHandle,
                                                 ctypes.c_uint]
            lib.cudaIpcCloseMemHandle.restype = ctypes.c_int
            lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
            lib.cudaSetDevice.restype = ctypes.c_int
            lib.cudaSetDevice.argtypes = [ctypes.c_int]
            lib.cudaGetDevice.restype = ctypes.c_int
            lib.cudaGetDevice.argtypes = [ctypes.POINTER(ctypes.c_int)]
            lib.cudaGetErrorString.restype = ctypes.c_char_p
            lib.cudaGetErrorString.argtypes = [ctypes.c_int]
            _cudart = lib
            return lib
        raise RuntimeError("cannot load libcudart (tried %s) to open rankd's CUDA IPC buffers"
                           % ", ".join(candidates))


def _check(lib, code, what):
    if code != 0:
        raise RuntimeError("%s: %s (CUDA error %d)" %
                           (what, lib.cudaGetErrorString(code).decode(errors="replace"), code))


class _Mapping:
    """One opened IPC handle: the device pointer, closed once (close())."""

    def __init__(self, handle, device):
        self.device = device
        self._lib = cudart()
        ptr = ctypes.c_void_p()
        current = ctypes.c_int()
        _check(self._lib, self._lib.cudaGetDevice(ctypes.byref(current)), "cudaGetDevice")
        _check(self._lib, self._lib.cudaSetDevice(device), "cudaSetDevice(%d)" % device)
        try:
            code = self._lib.cudaIpcOpenMemHandle(
                ctypes.byref(ptr), _IpcHandle.from_buffer_copy(handle), _LAZY_ENABLE_PEER_ACCESS)
        finally:
            self._lib.cudaSetDevice(current.value)
        _check(self._lib, code, "cannot open rankd's CUDA IPC buffer on device %d "
               "(is came-rankd on this machine, with the same CUDA_VISIBLE_DEVICES?)" % device)
        self.ptr = ptr.value

    def close(self):
        ptr, self.ptr = self.ptr, None
        if ptr is not None:
            _check(self._lib, self._lib.cudaIpcCloseMemHandle(ctypes.c_void_p(ptr)),
                   "cudaIpcCloseMemHandle")


class _DeviceArray:
    """__cuda_array_interface__ over [ptr, ptr + numel elements) of a mapping; holds the
    mapping so that the tensors made from it keep it referenced."""

    def __init__(self, mapping, ptr, numel, typestr):
        self._mapping = mapping
        self.__cuda_array_interface__ = {
            "shape": (numel,), "typestr": typestr, "data": (ptr, False), "version": 2,
            "strides": None}


def check_buffer(buffer, numel, dtype):
    """Validates a CUDA SharedBuffer for `numel` elements before anything is opened: a
    handle of cudaIpcMemHandle_t's size, a device torch sees, enough bytes. Raises
    ValueError for a malformed buffer, RuntimeError when this process cannot use it."""
    if len(buffer.cuda_ipc_handle) != _IPC_HANDLE_BYTES:
        raise ValueError("rankd's CUDA buffer has an IPC handle of %d bytes, not %d" %
                         (len(buffer.cuda_ipc_handle), _IPC_HANDLE_BYTES))
    if buffer.device < 0:
        raise ValueError("rankd's buffer carries a CUDA IPC handle but device %d" % buffer.device)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if buffer.bytes < numel * itemsize:
        raise ValueError("rankd's CUDA buffer has %d bytes, fewer than %d elements of %s" %
                         (buffer.bytes, numel, dtype))
    if not torch.cuda.is_available():
        raise RuntimeError("rankd keeps the buffers on CUDA device %d, but torch sees no CUDA "
                           "device in this process (a CPU-only torch, or CUDA_VISIBLE_DEVICES "
                           "hides it): start came-rankd without --device" % buffer.device)
    if buffer.device >= torch.cuda.device_count():
        raise RuntimeError("rankd keeps the buffers on CUDA device %d, but this process sees "
                           "%d devices: give rankd and trainer the same CUDA_VISIBLE_DEVICES" %
                           (buffer.device, torch.cuda.device_count()))


class CudaTensorBuffer:
    """One CUDA IPC buffer of `numel` elements, mapped as the flat tensor `flat`; the
    counterpart of shm.SharedTensorBuffer for device memory."""

    def __init__(self, buffer, numel):
        self.dtype = torch_dtype(buffer.dtype)
        self.numel = int(numel)
        check_buffer(buffer, self.numel, self.dtype)
        self.name = "cuda:%d ipc" % buffer.device
        self.device = torch.device("cuda", buffer.device)
        self._itemsize = torch.empty(0, dtype=self.dtype).element_size()
        self._mapping = _Mapping(bytes(buffer.cuda_ipc_handle), buffer.device)
        self.flat = self.view(0, self.numel, (self.numel,))
        self._begin = self._mapping.ptr
        self._end = self._begin + self.numel * self._itemsize

    def view(self, offset, numel, shape):
        """Returns the elements [offset, offset + numel) as a tensor of `shape`, on a
        storage of its own."""
        if offset < 0 or numel < 0 or offset + numel > self.numel:
            raise ValueError("tensor [%d, %d) lies outside buffer %s of %d elements" %
                             (offset, offset + numel, self.name, self.numel))
        if self._mapping.ptr is None:
            raise RuntimeError("the CUDA IPC buffer is closed")
        array = _DeviceArray(self._mapping, self._mapping.ptr + offset * self._itemsize, numel,
                             _TYPESTR[self.dtype])
        t = torch.as_tensor(array, device=self.device)
        if self.dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        return t.view(shape)

    def contains(self, tensor):
        """Returns whether `tensor`'s data lies inside this mapping."""
        if tensor.device != self.device or self._mapping.ptr is None:
            return False
        ptr = tensor.data_ptr()
        return self._begin <= ptr and ptr + tensor.numel() * tensor.element_size() <= self._end

    def close(self):
        """Waits for the device's queued work, then closes the mapping: every view is
        invalid afterwards (rankd frees the memory on Detach)."""
        self.flat = None
        if self._mapping.ptr is not None:
            torch.cuda.synchronize(self.device)
            self._mapping.close()
