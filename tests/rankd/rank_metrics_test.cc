// RankMetrics: the Prometheus text a scrape of came-rankd's /metrics returns after steps.
#include "runtime/rankd/rank_metrics.h"

#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "runtime/service/clock.h"

namespace came::rankd {
namespace {

using ::testing::HasSubstr;

std::string Scrape(const RankMetrics& m) {
  return prometheus::TextSerializer().Serialize(m.registry()->Collect());
}

TEST(RankMetricsTest, StepsPhasesBytesAndStateAreExported) {
  RankMetrics metrics(3);
  EngineStepStats s;
  s.grad_norm = 2.5;
  s.min_clip_scale = 0.25;
  s.seconds = {0.5, 0.125, 1.0, 0.25, 2.0};
  s.bytes_reduce_scatter = 1000;
  s.bytes_stats = 24;
  s.bytes_all_gather = 1000;
  StateBytes b{0, 4096, 64, 512};
  metrics.Observe(s, b);
  s.skipped = true;
  metrics.Observe(s, b);
  const std::string text = Scrape(metrics);
  EXPECT_THAT(text, HasSubstr("came_steps_total{rank=\"3\"} 2"));
  EXPECT_THAT(text, HasSubstr("came_skipped_steps_total{rank=\"3\"} 1"));
  EXPECT_THAT(text, HasSubstr("came_step_phase_seconds_total{phase=\"kernels\",rank=\"3\"} 2"));
  EXPECT_THAT(text, HasSubstr("came_step_phase_seconds_total{phase=\"reduce_scatter\",rank=\"3\"} 1"));
  EXPECT_THAT(text, HasSubstr("came_collective_bytes_total{collective=\"all_gather\",rank=\"3\"} 2000"));
  EXPECT_THAT(text, HasSubstr("came_collective_bytes_total{collective=\"all_reduce\",rank=\"3\"} 48"));
  EXPECT_THAT(text, HasSubstr("came_grad_norm{rank=\"3\"} 2.5"));
  EXPECT_THAT(text, HasSubstr("came_clip_scale{rank=\"3\"} 0.25"));
  EXPECT_THAT(text, HasSubstr("came_optimizer_state_bytes{kind=\"momentum\",rank=\"3\"} 4096"));
  EXPECT_THAT(text, HasSubstr("came_optimizer_state_bytes{kind=\"factored\",rank=\"3\"} 512"));
  EXPECT_THAT(text, HasSubstr("came_step_duration_seconds_count{rank=\"3\"} 2"));
  EXPECT_THAT(text, HasSubstr("came_step_duration_seconds_sum{rank=\"3\"} 4"));
}

TEST(RankMetricsTest, CheckpointsAreTimedFromBeginToCommitAndCountTheirBytes) {
  RankMetrics metrics(1);
  service::FakeClock clock;
  int committed = 0;
  CheckpointHooks hooks;
  hooks.begin = [&](int64_t step) -> absl::StatusOr<std::pair<std::string, std::string>> {
    clock.Advance(absl::Seconds(1));  // the time the coordinator takes to answer
    return std::pair{"ckpt-" + std::to_string(step), "/ckpt"};
  };
  hooks.report = [&](const std::string&, const std::string&, int64_t, const std::string&) {
    clock.Advance(absl::Seconds(2));
    return absl::OkStatus();
  };
  hooks.commit = [&](const std::string& id) -> absl::StatusOr<std::string> {
    if (++committed == 2) return absl::AbortedError("a rank left");
    return "/ckpt/" + id + "/manifest.json";
  };
  CheckpointHooks timed = metrics.Instrument(std::move(hooks), &clock);
  EXPECT_FALSE(timed.latest);  // unset hooks stay unset

  auto begun = timed.begin(10);
  ASSERT_TRUE(begun.ok());
  ASSERT_TRUE(timed.report(begun->first, "shard-1", 4000, "sha").ok());
  ASSERT_TRUE(timed.commit(begun->first).ok());
  // A failed commit counts the bytes written but no checkpoint.
  begun = timed.begin(20);
  ASSERT_TRUE(begun.ok());
  ASSERT_TRUE(timed.report(begun->first, "shard-1", 1000, "sha").ok());
  EXPECT_EQ(timed.commit(begun->first).status().code(), absl::StatusCode::kAborted);

  const std::string text = Scrape(metrics);
  EXPECT_THAT(text, HasSubstr("came_checkpoint_duration_seconds_count{rank=\"1\"} 1"));
  EXPECT_THAT(text, HasSubstr("came_checkpoint_duration_seconds_sum{rank=\"1\"} 3"));
  EXPECT_THAT(text, HasSubstr("came_checkpoint_bytes_total{rank=\"1\"} 5000"));
}

TEST(RankMetricsTest, CheckpointMetricsExistBeforeTheFirstCheckpoint) {
  const std::string text = Scrape(RankMetrics(0));
  EXPECT_THAT(text, HasSubstr("came_checkpoint_duration_seconds_count{rank=\"0\"} 0"));
  EXPECT_THAT(text, HasSubstr("came_checkpoint_bytes_total{rank=\"0\"} 0"));
}

}  // namespace
}  // namespace came::rankd
