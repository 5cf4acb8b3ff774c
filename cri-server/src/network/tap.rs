//! The tap device the pod VM's virtio-net uses, joined to the CNI interface.
