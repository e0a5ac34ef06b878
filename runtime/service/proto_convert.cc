#include "runtime/service/proto_convert.h"

namespace came::service {

v1::JobState ToProto(JobState state) {
  switch (state) {
    case JobState::kForming:
      return v1::JOB_STATE_FORMING;
    case JobState::kRunning:
      return v1::JOB_STATE_RUNNING;
    case JobState::kFailed:
      return v1::JOB_STATE_FAILED;
    case JobState::kFinished:
      return v1::JOB_STATE_FINISHED;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

JobState FromProto(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_RUNNING:
      return JobState::kRunning;
    case v1::JOB_STATE_FAILED:
      return JobState::kFailed;
    case v1::JOB_STATE_FINISHED:
      return JobState::kFinished;
    default:
      return JobState::kForming;
  }
}

void ToProto(const JobConfig& config, v1::JobConfig* out) {
  v1::CameHyperparameters* h = out->mutable_defaults();
  h->set_lr(config.defaults.lr);
  h->set_eps1(config.defaults.eps1);
  h->set_eps2(config.defaults.eps2);
  h->set_clip_threshold(config.defaults.clip_threshold);
  h->set_beta1(config.defaults.beta1);
  h->set_beta2(config.defaults.beta2);
  h->set_beta3(config.defaults.beta3);
  h->set_weight_decay(config.defaults.weight_decay);
  out->set_backend(config.backend == Backend::kNccl ? v1::BACKEND_NCCL : v1::BACKEND_GLOO);
  out->set_plan_alignment(config.plan_alignment);
  out->set_plan_version(config.plan_version);
  out->set_checkpoint_dir(config.checkpoint_dir);
  out->set_lease_ms(absl::ToInt64Milliseconds(config.lease));
  out->set_checkpoint_every(config.checkpoint_every);
}

JobConfig FromProto(const v1::JobConfig& config) {
  JobConfig out;
  const v1::CameHyperparameters& h = config.defaults();
  out.defaults = CameHyper{h.lr(),    h.eps1(),  h.eps2(),  h.clip_threshold(),
                           h.beta1(), h.beta2(), h.beta3(), h.weight_decay()};
  out.backend = config.backend() == v1::BACKEND_NCCL ? Backend::kNccl : Backend::kGloo;
  out.plan_alignment = config.plan_alignment();
  out.plan_version = config.plan_version();
  out.checkpoint_dir = config.checkpoint_dir();
  out.lease = absl::Milliseconds(config.lease_ms());
  out.checkpoint_every = config.checkpoint_every();
  return out;
}

void ToProto(const CheckpointInfo& info, v1::CheckpointInfo* out) {
  out->set_checkpoint_id(info.id);
  out->set_step(info.step);
  out->set_directory(info.directory);
  out->set_manifest_path(info.manifest_path);
}

CheckpointInfo FromProto(const v1::CheckpointInfo& info) {
  return CheckpointInfo{info.checkpoint_id(), info.step(), info.directory(),
                        info.manifest_path()};
}

void ToProto(const JobStatus& status, v1::JobStatusResponse* out) {
  out->set_state(ToProto(status.state));
  out->set_abort_reason(status.abort_reason);
  out->set_world_size(status.world_size);
  out->set_job_id(status.job_id);
  for (const MemberStatus& m : status.members) {
    v1::Member* pm = out->add_members();
    pm->set_rank(m.rank);
    pm->set_host(m.host);
    for (const std::string& e : m.endpoints) pm->add_endpoints(e);
    pm->set_heartbeat_age_seconds(absl::ToDoubleSeconds(m.heartbeat_age));
    pm->set_step(m.step);
    pm->set_finished(m.finished);
  }
  out->set_step(status.step);
  out->set_has_checkpoint(status.latest_checkpoint.has_value());
  if (status.latest_checkpoint) ToProto(*status.latest_checkpoint, out->mutable_latest_checkpoint());
  out->set_stop_requested(status.stop_requested);
  out->set_generation(status.generation);
}

JobStatus FromProto(const v1::JobStatusResponse& status) {
  JobStatus out;
  out.state = FromProto(status.state());
  out.abort_reason = status.abort_reason();
  out.world_size = status.world_size();
  out.job_id = status.job_id();
  for (const v1::Member& m : status.members()) {
    out.members.push_back(MemberStatus{m.rank(), m.host(), {m.endpoints().begin(), m.endpoints().end()},
                                       absl::Seconds(m.heartbeat_age_seconds()), m.step(),
                                       m.finished()});
  }
  out.step = status.step();
  if (status.has_checkpoint()) out.latest_checkpoint = FromProto(status.latest_checkpoint());
  out.stop_requested = status.stop_requested();
  out.generation = status.generation();
  return out;
}

}  // namespace came::service
