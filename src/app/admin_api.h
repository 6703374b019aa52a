// The admin API of a controller (`loadstar up`'s admin port, `loadstar
// controller`'s): replicas, services and queues as JSON for `loadstar get`,
// apply, metrics, health, and the embedded agent's API under /agent when
// there is one. Plain request and response types: no Asio here.
#pragma once

#include <vector>

#include "api/resources.h"
#include "controller/controller.h"
#include "http/server.h"
#include "store/store.h"

namespace loadstar::agent {
class Agent;
}

namespace loadstar::app {

http::Response admin_response(const http::Request& req, controller::Controller* ctl,
                              store::ResourceStore* store, agent::Agent* agent);

// Applies resources to the store, models first.
Status apply_all(store::ResourceStore& store, const std::vector<api::Resource>& resources);

}  // namespace loadstar::app
