// A fixed team of threads that runs one function on every member and waits for all of them:
// the fork/join the CPU kernels need, with no allocation per call.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <type_traits>
#include <mutex>
#include <thread>
#include <vector>

namespace came {

// ThreadTeam runs fn(member) for member = 0..size()-1, the calling thread being member 0,
// and returns when every member is done. Run is not reentrant and must be called from one
// thread at a time; the team owns its threads and joins them on destruction.
class ThreadTeam {
 public:
  explicit ThreadTeam(int size);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  int size() const { return size_; }

  // Runs fn(member) on every member; returns when all have returned. Allocates nothing.
  template <typename Fn>
  void Run(Fn&& fn) {
    RunErased(&fn, [](void* f, int member) { (*static_cast<std::remove_reference_t<Fn>*>(f))(member); });
  }

 private:
  using Invoker = void (*)(void* fn, int member);
  void RunErased(void* fn, Invoker invoke);
  void WorkerLoop(int member);

  const int size_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  void* fn_ = nullptr;                             // guarded by mu_
  Invoker invoke_ = nullptr;                       // guarded by mu_
  uint64_t generation_ = 0;                        // guarded by mu_
  int pending_ = 0;                                // guarded by mu_
  bool stop_ = false;                              // guarded by mu_
  std::vector<std::thread> threads_;
};

// Returns the number of hardware threads (at least 1).
int HardwareThreads();

}  // namespace came
