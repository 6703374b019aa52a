// Workloads another controller runs and Loadstar only admits through its
// queues, as Kueue does: batch/v1 Jobs labelled with a Loadstar queue
// (batch_admission.h). Each is a gang of the GPU scheduler in its queue,
// with the same fair shares, reclaim and GPU-seconds as replicas and
// Loadstar's own Jobs; once placed, it is released to run where it was
// placed, and its place is given back when it ends.
#pragma once

#include <string>
#include <vector>

#include "controller/placement.h"

namespace loadstar::controller {

class Admissions {
 public:
  virtual ~Admissions() = default;
  // This pass's workloads (PlacementReplica::job set), in name order; the
  // places of those that ended or went away are given back first
  // (Placement::remove), and those running already where a previous
  // controller placed them are adopted (Placement::adopt).
  virtual std::vector<PlacementReplica> placement_units(Placement& placement) = 0;
  virtual bool has(const std::string& name) const = 0;
  // Why one is not placed yet (the scheduler's reason).
  virtual void waiting(const std::string& name, const std::string& why) = 0;
  // After placement: releases what was placed.
  virtual void release(Placement& placement, double now) = 0;
};

}  // namespace loadstar::controller
