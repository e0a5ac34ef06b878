/* The C ABI of came-runtime's fused CAME kernels: what the Python package `came` (came.CAME,
 * loaded with ctypes) and any other language binding call. Raw pointers, shapes, dtypes and a
 * stream in; no C++ types, no exceptions, no PyTorch.
 *
 * One came_optimizer holds a fixed layout: a list of tensors (shape, parameter and gradient
 * dtype, parameter group) on one device, the CPU or one CUDA device. It owns only its
 * workspace (sized at creation, never per step); every tensor buffer (parameters, gradients,
 * fp32 master copies, state) belongs to the caller and is passed again at every step, so a
 * caller whose gradients move between steps (zero_grad(set_to_none=True)) just passes the new
 * pointers. The state buffers use came-pytorch's layout:
 *   factored (ndim >= 2, shape [batch..., n, m]):
 *     exp_avg [shape], exp_avg_sq_row [batch..., n], exp_avg_sq_col [batch..., m],
 *     exp_avg_res_row [batch..., n], exp_avg_res_col [batch..., m];
 *   unfactored (ndim <= 1): exp_avg [shape], exp_avg_sq [shape].
 * All state is float32, contiguous. `master` is the float32 copy of a bf16/fp16 parameter
 * (NULL for float32 parameters, which are updated in place).
 *
 * A step is CAME exactly as came-pytorch 0.1.3 computes it (docs/design.md, "The algorithm"),
 * with one difference: a step whose gradients hold a NaN or an infinity is skipped on every
 * tensor, leaving all state and parameters bitwise unchanged (torch's fused optimizers do the
 * same with found_inf), and reported in came_step_result.skipped.
 *
 * Errors: every function returns CAME_OK (0) or an error code and then leaves a one-line
 * message for this thread in came_last_error(). Nothing is changed by a call that fails.
 * Thread-safety: one came_optimizer is used by one thread at a time; distinct optimizers are
 * independent. */
#ifndef CAME_CAPI_H_
#define CAME_CAPI_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define CAME_API __declspec(dllexport)
#else
#define CAME_API __attribute__((visibility("default")))
#endif

#define CAME_ABI_VERSION 1
#define CAME_MAX_DIMS 8

enum came_status_code {
  CAME_OK = 0,
  CAME_INVALID_ARGUMENT = 1,  /* bad shape, dtype, pointer, hyperparameter, ... */
  CAME_UNAVAILABLE = 2,       /* this build has no CUDA, or no CUDA device is present */
  CAME_INTERNAL = 3,          /* a CUDA error or another failure inside the library */
};

enum came_dtype { CAME_FLOAT32 = 0, CAME_BFLOAT16 = 1, CAME_FLOAT16 = 2 };

/* What a tensor is; fixed for the life of an optimizer. */
typedef struct came_tensor_desc {
  int32_t ndim;                    /* 0 .. CAME_MAX_DIMS */
  int64_t shape[CAME_MAX_DIMS];    /* dims > 0 */
  int32_t param_dtype;             /* came_dtype */
  int32_t grad_dtype;              /* came_dtype */
  int32_t group;                   /* index into the step's hyperparameters, >= 0 */
} came_tensor_desc;

/* Where a tensor's buffers are at this step (device pointers for a CUDA optimizer). */
typedef struct came_tensor_ptrs {
  void* param;            /* param_dtype, numel elements, updated */
  const void* grad;       /* grad_dtype, numel elements, read */
  float* master;          /* numel, bf16/fp16 parameters only (else NULL), updated */
  float* exp_avg;         /* numel */
  float* exp_avg_sq;      /* unfactored: numel; factored: NULL */
  float* exp_avg_sq_row;  /* factored: batch * n; unfactored: NULL */
  float* exp_avg_sq_col;  /* factored: batch * m */
  float* exp_avg_res_row; /* factored: batch * n */
  float* exp_avg_res_col; /* factored: batch * m */
} came_tensor_ptrs;

/* One parameter group's hyperparameters for this step (came-pytorch's meaning). */
typedef struct came_hyper {
  double lr;              /* >= 0 */
  double beta1, beta2, beta3;  /* each in [0, 1) */
  double eps1, eps2;      /* > 0 */
  double clip_threshold;  /* > 0 */
  double weight_decay;    /* >= 0 */
} came_hyper;

typedef struct came_step_result {
  int32_t skipped;        /* 1: a non-finite gradient; nothing was changed */
  double grad_norm;       /* L2 norm of all gradients of the step */
} came_step_result;

/* Returns CAME_ABI_VERSION of the loaded library. */
CAME_API int32_t came_abi_version(void);

/* Returns a static description of the build: "cpu=avx2 cuda=sm_90" or "cpu=avx2 cuda=none". */
CAME_API const char* came_build_info(void);

/* Returns the message of this thread's last failed call ("" if none). */
CAME_API const char* came_last_error(void);

/* Returns the number of CUDA devices present (0 without CUDA or without a device). */
CAME_API int32_t came_cuda_device_count(void);

/* Creates an optimizer for `num_tensors` tensors on `device`: -1 for the CPU (the fused
 * AVX2/AVX-512/generic loops on `num_threads` threads, the caller included; <= 0 picks the
 * number of cores), or a CUDA device ordinal (num_threads ignored). */
CAME_API int32_t came_optimizer_create(int32_t device, const came_tensor_desc* tensors,
                                       int64_t num_tensors, int32_t num_threads,
                                       void** out_optimizer);

CAME_API void came_optimizer_destroy(void* optimizer);

/* Runs one step over all tensors: `ptrs` has num_tensors entries in creation order, `groups`
 * num_groups entries (> every tensor's group). `stream` is the cudaStream_t to run on (NULL:
 * the legacy default stream) and is ignored on the CPU. On the CPU the call returns when the
 * step is done. On CUDA the work is queued on `stream` and the call returns at once; `result`
 * must then be NULL (the result stays on the device; see came_optimizer_last_result), so a
 * step makes no host round trip and can be captured in a CUDA graph. On the CPU `result` may
 * be NULL too. */
CAME_API int32_t came_optimizer_step(void* optimizer, const came_tensor_ptrs* ptrs,
                                     const came_hyper* groups, int32_t num_groups, void* stream,
                                     came_step_result* result);

/* Copies the result of the last step into `result`, waiting for it on CUDA (a host round
 * trip: call it only when the numbers are wanted). */
CAME_API int32_t came_optimizer_last_result(void* optimizer, came_step_result* result);

#ifdef __cplusplus
}
#endif

#endif /* CAME_CAPI_H_ */
