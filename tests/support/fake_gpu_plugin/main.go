// A device plugin that advertises fake NVIDIA GPUs to the kubelet, in the
// form NVIDIA's own device plugin uses: resource nvidia.com/gpu, devices named
// by GPU UUID ("GPU-<uuid>"; with time-slicing each GPU appears REPLICAS times
// as "GPU-<uuid>::<n>"), and MIG instances as nvidia.com/mig-<profile>
// ("MIG-<uuid>"). Allocate answers as NVIDIA's plugin does with its default
// envvar strategy: NVIDIA_VISIBLE_DEVICES lists the allocated devices (the
// physical GPU of a time-sliced replica). There is no hardware: it exists so
// that a real kubelet admits Pods asking for GPUs in Loadstar's node tests.
// Built against the kubelet's own device-plugin stub from the Kubernetes
// source that tests/support/real-node.sh builds the node from.
//
//   fake-gpu-plugin -gpus 2 -replicas 1 -mig 1g.10gb=2 -node NAME -prefer last
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	dm "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
)

// uuid is stable per node and index, so a restarted plugin advertises the
// same devices.
func uuid(node, kind string, i int) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s/%s/%d", node, kind, i)))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// physical is the GPU a (possibly time-sliced) device ID stands for.
func physical(id string) string {
	if i := strings.Index(id, "::"); i >= 0 {
		return id[:i]
	}
	return id
}

func allocate(r *pluginapi.AllocateRequest, devs map[string]pluginapi.Device) (*pluginapi.AllocateResponse, error) {
	var out pluginapi.AllocateResponse
	for _, req := range r.ContainerRequests {
		seen := map[string]bool{}
		var ids []string
		for _, id := range req.DevicesIDs {
			dev, ok := devs[id]
			if !ok {
				return nil, fmt.Errorf("no device %s", id)
			}
			if dev.Health != pluginapi.Healthy {
				return nil, fmt.Errorf("device %s is unhealthy", id)
			}
			if p := physical(id); !seen[p] {
				seen[p] = true
				ids = append(ids, p)
			}
		}
		sort.Strings(ids)
		out.ContainerResponses = append(out.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(ids, ",")},
		})
	}
	return &out, nil
}

// preferLast answers the kubelet's GetPreferredAllocation with the devices
// of the highest IDs: NVIDIA's plugin also states a preference of its own
// (topology-aligned), and the kubelet follows it, so which card a Pod gets
// is the plugin's choice, not the scheduler's.
func preferLast(r *pluginapi.PreferredAllocationRequest, devs map[string]pluginapi.Device) (*pluginapi.PreferredAllocationResponse, error) {
	var out pluginapi.PreferredAllocationResponse
	for _, req := range r.ContainerRequests {
		chosen := append([]string{}, req.MustIncludeDeviceIDs...)
		taken := map[string]bool{}
		for _, id := range chosen {
			taken[id] = true
		}
		available := append([]string{}, req.AvailableDeviceIDs...)
		sort.Sort(sort.Reverse(sort.StringSlice(available)))
		for _, id := range available {
			if len(chosen) >= int(req.AllocationSize) {
				break
			}
			if !taken[id] {
				chosen = append(chosen, id)
				taken[id] = true
			}
		}
		out.ContainerResponses = append(out.ContainerResponses,
			&pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: chosen})
	}
	return &out, nil
}

func serve(dir, resource string, devs []*pluginapi.Device, prefer string) (*dm.Stub, error) {
	socket := filepath.Join(dir, "loadstar-fake-"+strings.NewReplacer("/", "-", ".", "-").Replace(resource)+".sock")
	stub := dm.NewDevicePluginStub(devs, socket, resource, false, prefer == "last")
	stub.SetAllocFunc(allocate)
	if prefer == "last" {
		stub.SetGetPreferredAllocFunc(preferLast)
	}
	if err := stub.Start(); err != nil {
		return nil, fmt.Errorf("%s: %v", resource, err)
	}
	// The Register RPC on the kubelet's socket, as NVIDIA's plugin registers.
	if err := stub.Register(pluginapi.KubeletSocket, resource, ""); err != nil {
		stub.Stop()
		return nil, fmt.Errorf("registering %s with the kubelet: %v", resource, err)
	}
	fmt.Printf("fake-gpu-plugin: %s: %d devices\n", resource, len(devs))
	return stub, nil
}

func main() {
	gpus := flag.Int("gpus", 2, "whole GPUs (nvidia.com/gpu)")
	replicas := flag.Int("replicas", 1, "time-slicing: each GPU advertised this many times")
	mig := flag.String("mig", "", "MIG instances, PROFILE=COUNT[,...] (nvidia.com/mig-PROFILE)")
	node := flag.String("node", "", "node name (makes the UUIDs)")
	prefer := flag.String("prefer", "last", "which devices to prefer when the kubelet asks: last (highest IDs) or none (the kubelet's own pick)")
	flag.Parse()
	if *node == "" {
		h, _ := os.Hostname()
		*node = h
	}
	var stubs []*dm.Stub
	stop := func() {
		for _, s := range stubs {
			s.Stop()
		}
	}
	if *gpus > 0 {
		var devs []*pluginapi.Device
		for i := 0; i < *gpus; i++ {
			id := "GPU-" + uuid(*node, "gpu", i)
			if *replicas <= 1 {
				devs = append(devs, &pluginapi.Device{ID: id, Health: pluginapi.Healthy})
				continue
			}
			for r := 0; r < *replicas; r++ {
				devs = append(devs, &pluginapi.Device{ID: fmt.Sprintf("%s::%d", id, r), Health: pluginapi.Healthy})
			}
		}
		s, err := serve(pluginapi.DevicePluginPath, "nvidia.com/gpu", devs, *prefer)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake-gpu-plugin:", err)
			os.Exit(1)
		}
		stubs = append(stubs, s)
	}
	if *mig != "" {
		for _, entry := range strings.Split(*mig, ",") {
			var profile string
			var count int
			eq := strings.Index(entry, "=")
			if eq <= 0 {
				fmt.Fprintf(os.Stderr, "fake-gpu-plugin: -mig: %q is not PROFILE=COUNT\n", entry)
				stop()
				os.Exit(2)
			}
			profile = entry[:eq]
			if _, err := fmt.Sscanf(entry[eq+1:], "%d", &count); err != nil || count <= 0 {
				fmt.Fprintf(os.Stderr, "fake-gpu-plugin: -mig: %q: COUNT must be a positive number\n", entry)
				stop()
				os.Exit(2)
			}
			var devs []*pluginapi.Device
			for i := 0; i < count; i++ {
				devs = append(devs, &pluginapi.Device{ID: "MIG-" + uuid(*node, "mig-"+profile, i), Health: pluginapi.Healthy})
			}
			s, err := serve(pluginapi.DevicePluginPath, "nvidia.com/mig-"+profile, devs, *prefer)
			if err != nil {
				fmt.Fprintln(os.Stderr, "fake-gpu-plugin:", err)
				stop()
				os.Exit(1)
			}
			stubs = append(stubs, s)
		}
	}
	// (A restarted kubelet forgets its plugins; the node script restarts this
	// one with it.)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	stop()
}
