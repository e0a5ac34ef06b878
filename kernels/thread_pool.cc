#include "kernels/thread_pool.h"

namespace came {

ThreadTeam::ThreadTeam(int size) : size_(size < 1 ? 1 : size) {
  threads_.reserve(size_ - 1);
  for (int m = 1; m < size_; ++m) threads_.emplace_back([this, m] { WorkerLoop(m); });
}

ThreadTeam::~ThreadTeam() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadTeam::RunErased(void* fn, Invoker invoke) {
  if (size_ == 1) {
    invoke(fn, 0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = fn;
    invoke_ = invoke;
    pending_ = size_ - 1;
    ++generation_;
  }
  start_cv_.notify_all();
  invoke(fn, 0);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return pending_ == 0; });
  fn_ = nullptr;
}

void ThreadTeam::WorkerLoop(int member) {
  uint64_t seen = 0;
  while (true) {
    void* fn;
    Invoker invoke;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
      invoke = invoke_;
    }
    invoke(fn, member);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }
}

int HardwareThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

}  // namespace came
