#include "runtime/service/coordinator_metrics.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace came::service {

CoordinatorMetrics::CoordinatorMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      ranks_alive_(prometheus::BuildGauge()
                       .Name("came_ranks_alive")
                       .Help("Joined, unfinished ranks whose lease has not run out")
                       .Register(*registry_)),
      world_size_(prometheus::BuildGauge()
                      .Name("came_world_size")
                      .Help("Ranks the job expects")
                      .Register(*registry_)),
      heartbeat_age_(prometheus::BuildGauge()
                         .Name("came_heartbeat_age_seconds")
                         .Help("Seconds since the rank's last Join or Heartbeat")
                         .Register(*registry_)),
      job_state_(prometheus::BuildGauge()
                     .Name("came_job_state")
                     .Help("1 for the job's current state, 0 for the others")
                     .Register(*registry_)),
      checkpoint_commits_(prometheus::BuildCounter()
                              .Name("came_checkpoint_commits_total")
                              .Help("Checkpoints committed by this coordinator")
                              .Register(*registry_)),
      rpc_total_(prometheus::BuildCounter()
                     .Name("came_rpc_total")
                     .Help("RPCs answered, by method and status code")
                     .Register(*registry_)) {
  checkpoint_commits_.Add({});  // exported as 0 before the first commit
}

void CoordinatorMetrics::CountRpc(std::string_view method, absl::StatusCode code) {
  rpc_total_
      .Add({{"method", std::string(method)}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
}

void CoordinatorMetrics::Update(const JobStatus& status, absl::Duration lease) {
  int alive = 0;
  for (const MemberStatus& m : status.members) {
    heartbeat_age_.Add({{"rank", absl::StrCat(m.rank)}})
        .Set(absl::ToDoubleSeconds(m.heartbeat_age));
    if (!m.finished && m.heartbeat_age <= lease && status.state != JobState::kFailed) ++alive;
  }
  ranks_alive_.Add({}).Set(alive);
  world_size_.Add({}).Set(status.world_size);
  for (JobState s : {JobState::kForming, JobState::kRunning, JobState::kFailed,
                     JobState::kFinished}) {
    job_state_.Add({{"state", std::string(JobStateName(s))}}).Set(s == status.state ? 1 : 0);
  }
  absl::MutexLock lock(&mu_);
  if (status.checkpoint_commits > commits_seen_) {
    checkpoint_commits_.Add({}).Increment(
        static_cast<double>(status.checkpoint_commits - commits_seen_));
    commits_seen_ = status.checkpoint_commits;
  }
}

}  // namespace came::service
