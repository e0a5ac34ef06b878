# Third-party packages, found once for the whole tree. See scripts/setup for where they
# come from (Debian's packages).
set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)
find_package(GTest REQUIRED)
find_package(benchmark REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)  # SHA-256 of checkpoint shards

# Gloo ships a plain CMake file, no package version; its target is `gloo`.
find_package(Gloo CONFIG QUIET PATHS /usr/share/cmake/Gloo)
if(NOT TARGET gloo)
  include(/usr/share/cmake/Gloo/GlooTargets.cmake OPTIONAL)
endif()
if(NOT TARGET gloo)
  message(FATAL_ERROR "Gloo not found: run scripts/setup (Debian package libgloo-dev)")
endif()

if(CAME_WITH_CUDA)
  find_package(CUDAToolkit REQUIRED)
  find_library(NCCL_LIBRARY NAMES nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
  find_path(NCCL_INCLUDE_DIR NAMES nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  if(NOT NCCL_LIBRARY OR NOT NCCL_INCLUDE_DIR)
    message(FATAL_ERROR "CAME_WITH_CUDA is ON but NCCL was not found")
  endif()
  add_library(came_nccl INTERFACE)
  target_link_libraries(came_nccl INTERFACE ${NCCL_LIBRARY} CUDA::cudart)
  target_include_directories(came_nccl INTERFACE ${NCCL_INCLUDE_DIR})
  message(STATUS "CUDA ${CUDAToolkit_VERSION}, NCCL ${NCCL_LIBRARY}")
endif()
