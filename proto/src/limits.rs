//! Size limits shared by both ends. The agent refuses requests over them; the
//! host refuses replies over them (a guest is not trusted to be reasonable).

/// Largest `data` in one `OutputChunk` or `StdinChunk`.
pub const MAX_STDIO_CHUNK_BYTES: usize = 32 * 1024;

/// How far the agent reads a process's stream ahead of what the reader has
/// acknowledged (`ReadOutputRequest.acknowledges`): output it holds for a
/// reader that may die.
pub const MAX_UNACKNOWLEDGED_OUTPUT_BYTES: usize = 256 * 1024;

/// Largest `data` in one `PortForwardInput` (host to pod).
pub const MAX_PORT_FORWARD_INPUT_BYTES: usize = 64 * 1024;

/// Largest `data` in one `PortForwardOutput` (pod to host).
pub const MAX_PORT_FORWARD_OUTPUT_BYTES: usize = 32 * 1024;

/// Largest OCI runtime spec JSON in `CreateContainerRequest`.
pub const MAX_SPEC_JSON_BYTES: usize = 1024 * 1024;

/// Largest OCI process JSON in `ExecProcessRequest`.
pub const MAX_PROCESS_JSON_BYTES: usize = 256 * 1024;

/// Largest OCI `LinuxResources` JSON in `UpdateContainerRequest`.
pub const MAX_RESOURCES_JSON_BYTES: usize = 64 * 1024;

/// Largest file content in one `CopyFileRequest`.
pub const MAX_COPY_FILE_BYTES: usize = 1024 * 1024;

/// Largest `max_bytes` of a `ReadFileRequest`, so a `ReadFileResponse` stays
/// well under [`MAX_REPLY_BYTES`].
pub const MAX_READ_FILE_BYTES: usize = 64 * 1024;

/// Largest message the agent's server decodes (a spec plus headroom).
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// Largest message hulld's client decodes from an agent. The largest honest
/// reply is `SandboxStatsResponse` (~200 bytes per container).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// Longest container or exec id.
pub const MAX_ID_LEN: usize = 64;

/// Longest version string in `HealthResponse`.
pub const MAX_VERSION_LEN: usize = 64;

/// Most containers a `SandboxStatsResponse` may list.
pub const MAX_CONTAINERS_PER_SANDBOX: usize = 512;
