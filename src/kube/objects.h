// Typed readers for the core objects Loadstar reads from the API server:
// one place that knows where a Pod keeps its readiness, address, ports and
// container states, so that every reader agrees. Lenient like the API's own
// clients: a missing or mistyped field reads as empty, never throws.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace loadstar::kube {

// On an engine Pod: the controller is draining it; gateways send it nothing
// new (Kubernetes mode's counterpart of leaving the routing table).
inline constexpr const char* kDrainingAnnotation = "loadstar.dev/draining";
// On a canary's replica Pods: the percentage of the service's requests the
// canary's replicas get together (gateways split by it).
inline constexpr const char* kCanaryWeightAnnotation = "loadstar.dev/canary-weight";
// The LoRA adapters a replica Pod's engine loaded at start, in the order of
// its flags ("a,b"): what the gateways may send there, and llama.cpp's
// indices.
inline constexpr const char* kLoraAdaptersAnnotation = "loadstar.dev/lora-adapters";

// The one taint replica Pods tolerate (any value, NoSchedule): the one GPU
// nodes commonly carry to keep other Pods off (NVIDIA's GPU operator docs).
// A node with any other NoSchedule or NoExecute taint is not placed on.
inline constexpr const char* kToleratedGpuTaint = "nvidia.com/gpu";

struct ContainerState {
  std::string name;
  std::string state;  // "waiting", "running", "terminated" or empty
  std::string reason, message;
  int exit_code = 0;
  // How its previous run ended (lastState.terminated), when it failed: the
  // exit code and the kubelet's termination message (with
  // terminationMessagePolicy FallbackToLogsOnError, the tail of its log).
  std::optional<int> last_exit_code;
  std::string last_message;
  // "waiting: ErrImagePull ...", "exited with code 1", "running", and for a
  // container that keeps failing its last error line: "engine waiting:
  // CrashLoopBackOff ...; last exit 2: error: unrecognized arguments: --x".
  std::string describe() const;
};

struct Pod {
  std::string name, namespace_name;
  std::map<std::string, std::string> labels, annotations;
  bool deleting = false;  // deletionTimestamp set
  std::string node_name;  // empty: not bound
  std::string phase;      // "Pending" when absent
  std::string reason, message;
  std::string pod_ip;
  bool ready = false;        // condition Ready is True
  bool initialized = false;  // condition Initialized is True
  struct Port {
    std::string container, name;
    int port = 0;
  };
  std::vector<Port> ports;  // every container's declared ports
  std::vector<ContainerState> containers, init_containers;

  // The port of `container` (any container when empty) named `name` (any
  // name when empty); the last declared wins.
  std::optional<int> port(std::string_view container, std::string_view name) const;
  const ContainerState* container(std::string_view name) const;
  // Ready, not going away, with an address: it may serve.
  bool serving() const { return ready && !deleting && !pod_ip.empty(); }
};

Pod pod_from_json(const nlohmann::json& object);

struct Taint {
  std::string key, value, effect;  // effect: NoSchedule, PreferNoSchedule or NoExecute
};

struct Node {
  std::string name;
  std::map<std::string, std::string> labels;
  std::vector<Taint> taints;
  std::string internal_ip;  // the InternalIP address; empty: none
  bool ready = false;       // condition Ready is True
  bool unschedulable = false;
  // status.allocatable, quantities parsed ("8", "32Gi", "500m" -> 0.5); an
  // unparsable one is left out.
  std::map<std::string, double> allocatable;

  std::string label(std::string_view key) const;
  // A NoSchedule or NoExecute taint other than the GPU one replicas
  // tolerate: Loadstar places nothing there, as kube-scheduler would not.
  bool repels_replicas() const;
  double allocatable_or_zero(std::string_view resource) const;
};

Node node_from_json(const nlohmann::json& object);

// An address behind a Service: a ready endpoint's IP and port.
struct EndpointAddress {
  std::string ip;
  uint16_t port = 0;
  std::string node_name;  // where the backing Pod runs; empty: unknown
  auto operator<=>(const EndpointAddress&) const = default;
};

// The ready addresses of an Endpoints object (subsets[].addresses, never
// notReadyAddresses) on the port named `port_name`, or on a subset's only
// port when `port_name` is empty; sorted, each once.
std::vector<EndpointAddress> ready_endpoints(const nlohmann::json& endpoints,
                                             std::string_view port_name = "");

}  // namespace loadstar::kube
