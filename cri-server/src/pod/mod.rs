//! Pod sandboxes as microVMs: the VMM process and its host cgroup, the agent
//! connection, container logs and host mounts copied into the guest.

pub mod cgroup;
pub mod container_spec;
pub mod host_mounts;
pub mod live;
pub mod logs;
pub mod vm;
