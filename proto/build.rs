//! Compiles `rtprelay/v1/relay.proto` with a vendored protoc, so a fresh machine needs no manual
//! protoc install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=rtprelay/v1/relay.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["rtprelay/v1/relay.proto"], &["."])?;
    Ok(())
}
