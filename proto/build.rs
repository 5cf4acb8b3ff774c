//! Generates the agent protocol's Rust code from `agent/v1/agent.proto` with
//! protoc (Debian's `protobuf-compiler`; `cargo xtask deps` installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=agent/v1/agent.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["agent/v1/agent.proto"], &["."])?;
    Ok(())
}
