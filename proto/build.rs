//! Compiles `proto/**/*.proto` with protox (pure Rust, so no `protoc` on the machine) and
//! generates the prost messages and the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = protox::compile(["keyturn/v1/agent.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
