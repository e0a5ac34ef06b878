"""ctypes binding of the fused kernels' C ABI (kernels/capi/came_capi.h).

Two shared libraries implement the same ABI: libcame_capi.so (the CPU kernels; needs no CUDA
library) and libcame_capi_cuda.so (CPU and CUDA kernels; built when nvcc was found). The CPU
one is loaded on first use, the CUDA one on the first CUDA tensor. They are looked for in
  1. came/lib/ inside the installed package (a wheel: pip install ./clients/python);
  2. <build>/lib of a CMake build whose <build>/python (the generated came.v1 stubs) is on
     sys.path;
  3. <repo>/build/lib of the checkout this package lives in.
"""

import ctypes
import os
import sys
import threading
import weakref

ABI_VERSION = 1
MAX_DIMS = 8

FLOAT32, BFLOAT16, FLOAT16 = 0, 1, 2
OK, INVALID_ARGUMENT, UNAVAILABLE, INTERNAL = 0, 1, 2, 3

CPU_LIBRARY = "libcame_capi.so"
CUDA_LIBRARY = "libcame_capi_cuda.so"

_HERE = os.path.dirname(os.path.abspath(__file__))


class TensorDesc(ctypes.Structure):
    _fields_ = [
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("param_dtype", ctypes.c_int32),
        ("grad_dtype", ctypes.c_int32),
        ("group", ctypes.c_int32),
    ]


# came_tensor_ptrs is nine pointers: param, grad, master, exp_avg, exp_avg_sq,
# exp_avg_sq_row, exp_avg_sq_col, exp_avg_res_row, exp_avg_res_col.
PTRS_PER_TENSOR = 9
# came_hyper is eight doubles in this order.
HYPER_FIELDS = ("lr", "beta1", "beta2", "beta3", "eps1", "eps2", "clip_threshold",
                "weight_decay")


class StepResult(ctypes.Structure):
    _fields_ = [("skipped", ctypes.c_int32), ("grad_norm", ctypes.c_double)]


class CameLibraryError(RuntimeError):
    """A failed call into the kernels' library (CAME_UNAVAILABLE or CAME_INTERNAL)."""


def _candidate_dirs():
    """Yields folders that may hold the libraries, best first."""
    yield os.path.join(_HERE, "lib")
    for p in sys.path:
        if p and os.path.isfile(os.path.join(p, "came", "v1", "rank_pb2.py")):
            yield os.path.join(os.path.dirname(os.path.abspath(p)), "lib")
    repo = os.path.abspath(os.path.join(_HERE, "..", "..", ".."))
    yield os.path.join(repo, "build", "lib")


def find_library(name):
    """Returns the path of the first `name` found (see the module docstring), or None."""
    for d in _candidate_dirs():
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path
    return None


class Library:
    """One loaded ABI library with its function signatures declared."""

    def __init__(self, path):
        self.path = path
        lib = ctypes.CDLL(path)
        lib.came_abi_version.restype = ctypes.c_int32
        lib.came_build_info.restype = ctypes.c_char_p
        lib.came_last_error.restype = ctypes.c_char_p
        lib.came_cuda_device_count.restype = ctypes.c_int32
        lib.came_optimizer_create.restype = ctypes.c_int32
        lib.came_optimizer_create.argtypes = [
            ctypes.c_int32, ctypes.POINTER(TensorDesc), ctypes.c_int64, ctypes.c_int32,
            ctypes.POINTER(ctypes.c_void_p)]
        lib.came_optimizer_destroy.restype = None
        lib.came_optimizer_destroy.argtypes = [ctypes.c_void_p]
        lib.came_optimizer_step.restype = ctypes.c_int32
        lib.came_optimizer_step.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p,
            ctypes.POINTER(StepResult)]
        lib.came_optimizer_last_result.restype = ctypes.c_int32
        lib.came_optimizer_last_result.argtypes = [ctypes.c_void_p, ctypes.POINTER(StepResult)]
        version = lib.came_abi_version()
        if version != ABI_VERSION:
            raise CameLibraryError(
                "%s has C ABI version %d, this package needs %d: rebuild the library with "
                "this checkout (or reinstall the package)" % (path, version, ABI_VERSION))
        self.lib = lib
        self.build_info = lib.came_build_info().decode()
        self._checker = None
        self._checker_lock = threading.Lock()

    def last_error(self):
        return self.lib.came_last_error().decode()

    def raise_for(self, code, what):
        """Raises ValueError (bad argument) or CameLibraryError for a failed call."""
        message = "came: %s: %s" % (what, self.last_error())
        if code == INVALID_ARGUMENT:
            raise ValueError(message)
        raise CameLibraryError(message)

    def create(self, device, descs, num_threads):
        """Returns a came_optimizer handle for these TensorDesc entries on `device`."""
        array = (TensorDesc * max(len(descs), 1))(*descs)
        handle = ctypes.c_void_p()
        code = self.lib.came_optimizer_create(device, array, len(descs), num_threads,
                                              ctypes.byref(handle))
        if code != OK:
            self.raise_for(code, "creating the optimizer")
        return handle

    def check_hyper(self, values):
        """Returns "" when one group's hyperparameters (HYPER_FIELDS order) are usable, else the
        library's message: the one check the kernels apply at every step."""
        import array
        with self._checker_lock:
            if self._checker is None:
                self._checker = self.create(-1, [], 1)
                weakref.finalize(self, self.lib.came_optimizer_destroy, self._checker)
            hyper = array.array("d", values)
            code = self.lib.came_optimizer_step(self._checker, None, hyper.buffer_info()[0], 1,
                                                None, None)
            if code == OK:
                return ""
            message = self.last_error()
            prefix = "group 0: "
            return message[len(prefix):] if message.startswith(prefix) else message


_lock = threading.Lock()
_loaded = {}


def load(cuda=False):
    """Returns the CPU library, or the CUDA one when `cuda`; loads it on first use."""
    name = CUDA_LIBRARY if cuda else CPU_LIBRARY
    with _lock:
        if name in _loaded:
            return _loaded[name]
        path = find_library(name)
        if path is None:
            searched = ", ".join(_candidate_dirs())
            if cuda:
                raise CameLibraryError(
                    "came.CAME got a CUDA tensor, but this installation has no CUDA kernels "
                    "(%s not found in %s): install on a machine where nvcc is found "
                    "(pip install ./clients/python), or build the CMake target "
                    "came_capi_cuda" % (name, searched))
            raise CameLibraryError(
                "came's kernels library %s was not found in %s: install the package "
                "(pip install ./clients/python) or build the CMake target came_capi"
                % (name, searched))
        try:
            lib = Library(path)
        except OSError as e:
            raise CameLibraryError("could not load %s: %s" % (path, e)) from None
        _loaded[name] = lib
        return lib
