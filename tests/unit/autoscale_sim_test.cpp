// The virtual-time model of an autoscaled service (autoscaler/simulation.h):
// the Azure trace's parser, and whole runs on small synthetic traces whose
// outcome is known — a static service pays for its lifetime, scale-from-zero
// holds the first request for the cold start, a step scales out and the
// stabilization window brings it back.
#include <gtest/gtest.h>

#include "autoscaler/shared_cluster.h"
#include "autoscaler/simulation.h"

namespace loadstar::autoscaler {
namespace {

TEST(AzureTrace, ParsesSortsAndMakesTimesRelative) {
  auto trace = parse_azure_trace(
      "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
      "2023-11-16 18:15:46.5,374,44\r\n"
      "2023-11-16 18:15:45.5,10,0\n"
      "\n"
      "2023-11-17 00:00:00.0,1,1\n",
      "t.csv");
  ASSERT_TRUE(trace.ok()) << trace.error().message;
  ASSERT_EQ(trace->size(), 3u);
  EXPECT_DOUBLE_EQ((*trace)[0].at_s, 0);
  EXPECT_EQ((*trace)[0].input_tokens, 10u);
  EXPECT_EQ((*trace)[0].output_tokens, 1u);  // at least one token
  EXPECT_DOUBLE_EQ((*trace)[1].at_s, 1);
  EXPECT_EQ((*trace)[1].input_tokens, 374u);
  EXPECT_DOUBLE_EQ((*trace)[2].at_s, 86400 - (18 * 3600 + 15 * 60 + 45.5));  // past midnight
}

TEST(AzureTrace, ErrorsNameTheFileAndLine) {
  auto no_header = parse_azure_trace("2023-11-16 18:15:46.5,374,44\n", "t.csv");
  ASSERT_FALSE(no_header.ok());
  EXPECT_NE(no_header.error().message.find("t.csv:1:"), std::string::npos);
  for (const char* bad : {"2023-11-16 18:15:46.5,374\n", "2023-11-16 18:15:46.5,-3,4\n",
                          "2023-13-16 18:15:46.5,3,4\n", "2023-11-16 18:15:46.5,3,4,5\n"}) {
    auto r = parse_azure_trace(std::string("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                           "2023-11-16 18:15:46.5,374,44\n") +
                                   bad,
                               "t.csv");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message.find("t.csv:3:"), std::string::npos) << r.error().message;
  }
  EXPECT_FALSE(parse_azure_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n", "t.csv").ok());
  // A byte-order mark and blank lines before the header are not errors.
  auto bom = parse_azure_trace(
      "\xEF\xBB\xBF\n\nTIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,3,4\n",
      "t.csv");
  ASSERT_TRUE(bom.ok()) << bom.error().message;
  EXPECT_EQ(bom->size(), 1u);
}

std::vector<TraceRequest> every(double gap, int n, uint32_t output_tokens, double from = 0) {
  std::vector<TraceRequest> trace;
  for (int i = 0; i < n; ++i) trace.push_back({from + i * gap, 100, output_tokens});
  return trace;
}

TEST(AutoscaleSim, AStaticServiceAnswersEveryRequestAndPaysForItsLifetime) {
  SimOptions o;
  o.replicas = 2;
  auto r = simulate(every(1, 20, 5), o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->requests, 20u);
  EXPECT_DOUBLE_EQ(r->slo_attainment, 1);
  EXPECT_EQ(r->cold_starts, 0u);
  EXPECT_EQ(r->scale_changes, 0u);
  EXPECT_GT(r->run_s, 19);
  EXPECT_NEAR(r->gpu_seconds, 2 * r->run_s, 1e-6);
  EXPECT_LT(r->ttft_p99_s, 0.1);  // an idle engine: one prefill step
}

TEST(AutoscaleSim, ScaleFromZeroHoldsTheFirstRequestForTheColdStart) {
  SimOptions o;
  o.replicas = 0;
  o.cold_start_s = 3;
  Spec spec;
  spec.min_replicas = 0;
  spec.max_replicas = 1;
  spec.in_flight_per_replica = 4;
  o.autoscaling = spec;
  auto r = simulate({{5, 100, 5}}, o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->held, 1u);
  EXPECT_EQ(r->cold_starts, 1u);
  // Held from its arrival until the replica the next pass asked for is ready.
  EXPECT_GE(r->ttft_p50_s, 3);
  EXPECT_LT(r->ttft_p50_s, 3 + o.period_s + 0.1);
  EXPECT_DOUBLE_EQ(r->slo_attainment, 0);                        // 3 s over the 2 s SLO
  EXPECT_NEAR(r->gpu_seconds, r->run_s - 5, o.period_s + 1e-6);  // paid from its creation
}

TEST(AutoscaleSim, AStepScalesOutAndStabilizationBringsItBack) {
  SimOptions o;
  o.engine.max_num_seqs = 2;
  o.cold_start_s = 2;
  Spec spec;
  spec.min_replicas = 1;
  spec.max_replicas = 8;
  spec.in_flight_per_replica = 2;
  spec.stable_window_s = 20;
  spec.panic_window_s = 4;
  spec.scale_down_stabilization_s = 30;
  o.autoscaling = spec;
  // 120 s at four requests a second, each ~200 decode steps; then one every 10 s.
  std::vector<TraceRequest> trace = every(0.25, 480, 200);
  for (const TraceRequest& t : every(10, 20, 5, 130)) trace.push_back(t);
  auto r = simulate(trace, o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GE(r->peak_replicas, 3u);
  EXPECT_GE(r->cold_starts, 2u);
  EXPECT_EQ(r->cut_off, 0u);  // drained replicas finished what they had
  ASSERT_FALSE(r->timeline.empty());
  EXPECT_EQ(r->timeline.back().replicas, 1u);
  // Not before the stabilization window after the step ended.
  for (const SimSample& s : r->timeline)
    if (s.at_s < 120 + spec.scale_down_stabilization_s) {
      EXPECT_GE(s.replicas, s.at_s > 60 ? 2u : 1u) << s.at_s;
    }
}

// With an SLO, a service back from zero starts what its held requests'
// arrival rate needs (at what a request took before it went to zero), not one
// replica that would take every held request into its queue.
TEST(AutoscaleSim, BackFromZeroAnSloServiceStartsWhatItsArrivalsNeed) {
  SimOptions o;
  o.engine.max_num_seqs = 2;
  o.cold_start_s = 5;
  o.replicas = 3;
  Spec spec;
  spec.min_replicas = 0;
  spec.max_replicas = 20;
  spec.slo_ttft_s = 2;
  spec.ttft_bounds = {0.5, 1, 2, 5};
  spec.idle_window_s = 60;
  spec.stable_window_s = 30;  // the load of the last five is held: down to zero 150 s after
  o.autoscaling = spec;
  // 150 s at four requests a second (~200 decode steps each), 250 s of
  // nothing (to zero), then the same again for 30 s.
  std::vector<TraceRequest> trace = every(0.25, 600, 200);
  for (const TraceRequest& t : every(0.25, 120, 200, 400)) trace.push_back(t);
  auto r = simulate(trace, o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  uint32_t before = 0, restart = 0;
  bool zero = false;
  for (const SimSample& s : r->timeline) {
    if (s.at_s > 100 && s.at_s < 150) before = std::max(before, s.replicas);
    if (s.at_s > 300 && s.at_s < 400) zero = zero || s.replicas == 0;
    // Replicas asked for before the first of them is ready.
    if (s.at_s >= 400 && s.at_s < 400 + o.cold_start_s) restart = std::max(restart, s.replicas);
  }
  EXPECT_TRUE(zero);
  EXPECT_GE(before, 3u);
  EXPECT_GE(restart, before - 1) << "before zero: " << before;
}

// Arrivals every `gap` seconds for `seconds`, `prompt` and `output` tokens each.
std::vector<TraceRequest> steady(double gap, double seconds, uint32_t prompt, uint32_t output) {
  std::vector<TraceRequest> trace;
  for (double t = 0; t < seconds; t += gap) trace.push_back({t, prompt, output});
  return trace;
}

TEST(AutoscaleSim, BaselinesAreTheFewestStaticReplicasThatMeetTheGoalAndAFloorUnderThem) {
  SimOptions o;
  o.engine.max_num_seqs = 4;
  const std::vector<TraceRequest> trace = steady(0.25, 300, 100, 300);
  auto b = baselines(trace, o, {.attainment = 0.99, .max_replicas = 12});
  ASSERT_TRUE(b.ok()) << b.error().message;
  ASSERT_TRUE(b->best_static);
  EXPECT_GE(b->best_static_report.slo_attainment, 0.99);
  o.replicas = *b->best_static - 1;
  auto fewer = simulate(trace, o);
  ASSERT_TRUE(fewer.ok());
  EXPECT_LT(fewer->slo_attainment, 0.99);  // one fewer misses the goal
  EXPECT_GT(b->clairvoyant_gpu_seconds, 0);
  EXPECT_LE(b->clairvoyant_gpu_seconds, 12 * b->best_static_report.run_s + 10);
  EXPECT_FALSE(baselines(trace, o, {.attainment = 0.99, .max_replicas = 0}).ok());
}

TEST(AutoscaleSim, AScheduleSetsTheCountAtEachPass) {
  SimOptions o;
  o.replicas = 1;
  o.cold_start_s = 1;
  o.schedule = Schedule{10, {1, 3, 1}};
  EXPECT_EQ(o.schedule->at(-1), 1u);
  EXPECT_EQ(o.schedule->at(15), 3u);
  EXPECT_EQ(o.schedule->at(1e6), 1u);  // the last holds
  auto r = simulate(every(1, 40, 5), o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->cold_starts, 2u);
  EXPECT_EQ(r->peak_replicas, 3u);
  for (const SimSample& s : r->timeline) {
    if (s.at_s > 12 && s.at_s < 20) {
      EXPECT_EQ(s.ready, 3u) << s.at_s;
    }
    if (s.at_s > 22) {
      EXPECT_EQ(s.replicas, 1u) << s.at_s;
    }
  }
}

// What an oracle asks for at each step: a reactive one the most of this
// step and the memory's before it (the need before the first, `initial`),
// one with foresight also the steps a cold start ahead; headroom on top,
// capped; one replica past the end.
TEST(AutoscaleSim, AnOracleAsksForTheMostNeededOverItsMemoryAndLookAhead) {
  const std::vector<uint32_t> need = {0, 0, 5, 0, 0, 0};
  auto counts = [&](uint32_t initial, double headroom, size_t memory, size_t ahead, uint32_t most) {
    return oracle_schedule(need, 2, initial, headroom, memory, ahead, most).counts;
  };
  using V = std::vector<uint32_t>;
  EXPECT_EQ(counts(1, 0, 1, 0, 40), (V{1, 0, 5, 5, 0, 0, 1}));  // reactive: never before it comes
  EXPECT_EQ(counts(1, 0, 0, 0, 40), (V{0, 0, 5, 0, 0, 0, 1}));
  EXPECT_EQ(counts(0, 0, 0, 2, 40), (V{5, 5, 5, 0, 0, 0, 1}));   // a cold start of 2 steps ahead
  EXPECT_EQ(counts(3, 0.5, 1, 0, 6), (V{5, 0, 6, 6, 0, 0, 1}));  // 1.5 x 3, 1.5 x 5 capped at 6
  const Schedule plan = oracle_schedule(need, 2, 0, 0, 1, 0, 40);
  EXPECT_EQ(plan.at(4.5), 5u);  // step 2 is [4, 6) seconds
  EXPECT_EQ(plan.at(100), 1u);
}

// A step up a long cold start away: an oracle that asks a cold start ahead
// meets it; none that only reacts (at once, to the true need, with any of
// the headrooms and memories searched) does. On a steady trace one does,
// for no more than the static count.
TEST(AutoscaleSim, OraclesWithForesightMeetAStepThatNoReactiveOneMeets) {
  SimOptions o;
  o.engine.max_num_seqs = 2;
  o.cold_start_s = 20;
  std::vector<TraceRequest> trace = steady(1, 60, 100, 200);
  for (TraceRequest t : steady(0.125, 60, 100, 200)) trace.push_back({t.at_s + 60, 100, 200});
  auto step = baselines(trace, o, {.max_replicas = 24, .reactive_oracles = true});
  ASSERT_TRUE(step.ok()) << step.error().message;
  EXPECT_GE(step->foresight.report.slo_attainment, 0.99);
  EXPECT_TRUE(step->foresight.foresight);
  EXPECT_FALSE(step->best_reactive) << step->best_reactive->report.slo_attainment;
  // Without `reactive_oracles` none is searched.
  auto without = baselines(steady(0.25, 120, 100, 200), o, {.max_replicas = 24});
  ASSERT_TRUE(without.ok());
  EXPECT_FALSE(without->best_reactive);
  auto flat =
      baselines(steady(0.25, 120, 100, 200), o, {.max_replicas = 24, .reactive_oracles = true});
  ASSERT_TRUE(flat.ok()) << flat.error().message;
  ASSERT_TRUE(flat->best_reactive && flat->best_static);
  EXPECT_GE(flat->best_reactive->report.slo_attainment, 0.99);
  EXPECT_FALSE(flat->best_reactive->foresight);
  EXPECT_LE(flat->best_reactive->report.gpu_seconds, flat->best_static_report.gpu_seconds * 1.5);
}

// The gateway's flow control: beyond the limit requests wait in the
// gateway's queue, not in the engine's; ordered by the SLO, the queue answers
// more within it under a backlog than first come, first served (which
// makes every request wait behind it); a full queue, and one waited on past
// its timeout, refuse.
TEST(AutoscaleSim, FlowControlQueuesInTheGatewayAndServesFirstWhatCanStillMeetTheSlo) {
  SimOptions o;
  o.engine.max_num_seqs = 2;
  o.max_in_flight_per_replica = 2;
  o.slo_ttft_s = 2;
  // One replica, twice the arrivals it can serve for a minute.
  const std::vector<TraceRequest> trace = every(0.5, 120, 200);
  auto fifo = simulate(trace, o);
  ASSERT_TRUE(fifo.ok()) << fifo.error().message;
  EXPECT_EQ(fifo->refused, 0u);
  EXPECT_EQ(fifo->rejected, 0u);
  ASSERT_FALSE(fifo->timeline.empty());
  uint32_t most = 0;
  for (const SimSample& s : fifo->timeline) most = std::max(most, s.in_flight);
  EXPECT_GT(most, 10u);  // queued ones count as in flight, as the controller counts them
  o.queue_slo_s = 2;
  auto by_slo = simulate(trace, o);
  ASSERT_TRUE(by_slo.ok()) << by_slo.error().message;
  EXPECT_EQ(by_slo->refused, 0u);
  EXPECT_GT(by_slo->slo_attainment, fifo->slo_attainment + 0.1)
      << fifo->slo_attainment << " first come, first served";
  o.max_queued = 5;
  auto full = simulate(trace, o);
  ASSERT_TRUE(full.ok());
  EXPECT_GT(full->refused, 10u);
  o.max_queued = 1024;
  o.queue_timeout_s = 5;
  auto timed_out = simulate(trace, o);
  ASSERT_TRUE(timed_out.ok());
  EXPECT_GT(timed_out->refused, 10u);
}

TEST(AutoscaleSim, RejectsNonsenseOptions) {
  SimOptions o;
  o.time_scale = 0;
  EXPECT_FALSE(simulate(every(1, 2, 5), o).ok());
  o.time_scale = 1;
  o.period_s = -1;
  EXPECT_FALSE(simulate(every(1, 2, 5), o).ok());
}

}  // namespace
}  // namespace loadstar::autoscaler

namespace loadstar::autoscaler {
namespace {

// `sim shared` on a small cluster: four 8-GPU nodes, serving peaking at half
// the GPUs, one-GPU jobs of an hour waiting in both job queues.
TEST(SharedCluster, SharingBeatsTheBestSplitThatKeepsTheSloAndErrorsNameTheLine) {
  const std::string nodes =
      "sn,cpu_milli,memory_mib,gpu,model\n"
      "n0,96000,786432,8,V100M32\nn1,96000,786432,8,V100M32\n"
      "n2,96000,786432,8,V100M32\nn3,96000,786432,8,V100M32\n";
  const std::string pods =
      "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
      "deletion_time,scheduled_time\n"
      "p0,4000,8192,1,1000,,LS,Running,0,3600,0\n"
      "p1,4000,8192,1,1000,,BE,Running,0,3600,0\n";
  // Arrivals that rise and fall: many in the middle of the hour, few at its ends.
  std::vector<TraceRequest> trace;
  for (int s = 0; s < 3600; ++s)
    for (int k = 0; k < (s > 1200 && s < 2400 ? 4 : 1); ++k) trace.push_back({double(s), 100, 10});
  SharedClusterOptions o;
  o.day_s = 6 * 3600;
  o.split_step = 0.25;
  o.backlog = 8;
  auto report = run_shared_cluster(nodes, pods, trace, o);
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->gpus, 32);
  EXPECT_EQ(report->peak_replicas, 16u);
  ASSERT_GE(report->best_split, 0) << report->table;
  const SharedClusterRun& best = report->splits[report->best_split];
  EXPECT_TRUE(report->shared.slo_kept) << report->table;
  // Jobs borrow what serving leaves idle on the split's serving side.
  EXPECT_GT(report->shared.utilisation, best.utilisation + 0.05) << report->table;
  EXPECT_NE(report->csv.find("shared,1.0000,"), std::string::npos) << report->csv;

  auto bad = run_shared_cluster(nodes, "name,cpu_milli\np0,1\n", trace, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("pods:1: missing column 'memory_mib'"), std::string::npos)
      << bad.error().message;
  const std::string broken = pods + "p2,4000,8192,one,1000,,LS,Running,0,3600,0\n";
  bad = run_shared_cluster(nodes, broken, trace, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("pods:4: num_gpu"), std::string::npos) << bad.error().message;
}

}  // namespace
}  // namespace loadstar::autoscaler
