"""Maps rankd's flat buffers (POSIX shared memory) into this process as torch tensors.

A SharedBuffer (rank.proto) names a shm object; the mapping is read-write and shared with
rankd, so a torch view of it is the buffer rankd reads gradients from and writes updated
parameters into. bf16 has no numpy type: it is mapped as int16 storage and viewed in torch
as torch.bfloat16.
"""

import mmap
import os

import numpy as np
import torch

from ._proto import common_pb2

# torch dtype -> (proto DType, numpy storage type).
_DTYPES = {
    torch.float32: (common_pb2.DTYPE_FLOAT32, np.float32),
    torch.bfloat16: (common_pb2.DTYPE_BFLOAT16, np.int16),
    torch.float16: (common_pb2.DTYPE_FLOAT16, np.float16),
}
_TORCH_BY_PROTO = {proto: dtype for dtype, (proto, _) in _DTYPES.items()}

SHM_DIR = "/dev/shm"


def proto_dtype(dtype):
    """Returns the came.v1.DType of a torch dtype; TypeError for an unsupported one."""
    try:
        return _DTYPES[dtype][0]
    except KeyError:
        raise TypeError("ShardedCAME supports float32, bfloat16 and float16 parameters, "
                        "not %s" % dtype) from None


def torch_dtype(dtype):
    """Returns the torch dtype of a came.v1.DType; ValueError for an unknown one."""
    try:
        return _TORCH_BY_PROTO[dtype]
    except KeyError:
        raise ValueError("rankd sent an unknown buffer dtype %d" % dtype) from None


def shm_path(name):
    """Returns the file of a POSIX shm name ("/came-x-r0-params" -> /dev/shm/came-x-r0-params)."""
    base = name[1:] if name.startswith("/") else name
    if not base or "/" in base or base in (".", ".."):
        raise ValueError("invalid shared-memory name %r" % name)
    return os.path.join(SHM_DIR, base)


class SharedTensorBuffer:
    """One shared buffer of `numel` elements, mapped as the flat tensor `flat`.

    view() hands out tensors that share the mapping. close() drops this object's
    references; the mapping itself goes away when the last view does.
    """

    def __init__(self, buffer, numel):
        if buffer.cuda_ipc_handle or buffer.device not in (-1,):
            raise ValueError("SharedTensorBuffer maps host shared memory; rankd's buffer is on "
                             "CUDA device %d (cuda_ipc.CudaTensorBuffer maps it)" % buffer.device)
        self.name = buffer.name
        self.dtype = torch_dtype(buffer.dtype)
        self.numel = int(numel)
        storage = _DTYPES[self.dtype][1]
        itemsize = np.dtype(storage).itemsize
        if buffer.bytes < self.numel * itemsize:
            raise ValueError("shared buffer %s has %d bytes, fewer than %d elements of %s" %
                             (buffer.name, buffer.bytes, self.numel, self.dtype))
        fd = os.open(shm_path(buffer.name), os.O_RDWR)
        try:
            self._mmap = mmap.mmap(fd, buffer.bytes) if buffer.bytes else None
        finally:
            os.close(fd)
        array = (np.frombuffer(self._mmap, dtype=storage, count=self.numel) if self._mmap
                 else np.zeros(0, dtype=storage))
        flat = torch.from_numpy(array)
        self.flat = flat.view(torch.bfloat16) if self.dtype == torch.bfloat16 else flat
        self._begin = self.flat.data_ptr()
        self._end = self._begin + self.numel * itemsize

    def view(self, offset, numel, shape):
        """Returns the elements [offset, offset + numel) as a tensor of `shape`."""
        if offset < 0 or numel < 0 or offset + numel > self.numel:
            raise ValueError("tensor [%d, %d) lies outside buffer %s of %d elements" %
                             (offset, offset + numel, self.name, self.numel))
        # A storage of its own over the same mapping (not a slice of `flat`): tools that take
        # tensors sharing a storage for aliases of one tensor (safetensors, Hugging Face's
        # save_pretrained, which keep only one of them) see distinct tensors, as they are.
        if self._mmap is None or numel == 0:
            return self.flat[offset:offset + numel].view(shape)
        storage = _DTYPES[self.dtype][1]
        array = np.frombuffer(self._mmap, dtype=storage, count=numel,
                              offset=offset * np.dtype(storage).itemsize)
        t = torch.from_numpy(array)
        if self.dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        return t.view(shape)

    def contains(self, tensor):
        """Returns whether `tensor`'s data lies inside this mapping."""
        ptr = tensor.data_ptr()
        return self._begin <= ptr and ptr + tensor.numel() * tensor.element_size() <= self._end

    def close(self):
        """Drops this object's references to the mapping (views handed out stay valid)."""
        self.flat = None
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # views are still alive; the mapping is released with the last of them
