// Routing tables from declared resources and ready endpoints: services with
// their pickers and hold settings, routes with their backends (external URLs
// resolved), tenants with their limiters. The controller of `loadstar up`
// and the gateways of Kubernetes mode build their tables with it; limiter
// and external-endpoint state survive from one table to the next.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "api/resources.h"
#include "gateway/routing_table.h"

namespace loadstar::controller {

gateway::PickerConfig picker_config(const api::RoutingSpec& spec);

class RoutingBuilder {
 public:
  std::shared_ptr<const gateway::RoutingTable> build(
      const std::map<std::string, api::InferenceService>& services,
      const std::vector<api::Tenant>& tenants, const std::vector<api::Route>& routes,
      const std::map<std::string, std::vector<std::shared_ptr<gateway::Endpoint>>>& ready);

 private:
  std::shared_ptr<const gateway::TenantDirectory> build_tenants(
      const std::vector<api::Tenant>& tenant_specs);
  gateway::RoutingTable::Route build_route(const api::Route& route);

  // Limiter state survives table changes and spec edits.
  std::map<std::string, std::shared_ptr<gateway::TenantLimiter>> tenants_;
  std::map<std::string, std::shared_ptr<gateway::Endpoint>> externals_;  // by URL
  uint64_t version_ = 0;
};

}  // namespace loadstar::controller
