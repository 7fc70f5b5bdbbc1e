//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed, and keeps
//! the encoded descriptor set for gRPC reflection and the compatibility guard.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/proxy/v1/control.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("proxy_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Hold a private key: their Debug (in lib.rs) leaves the key out, so no `{:?}` of a
        // snapshot can ever log one.
        .skip_debug([".proxy.v1.Certificate", ".proxy.v1.UpstreamTls"])
        .compile_fds(fds)?;
    if std::env::var_os("CARGO_FEATURE_ETCD").is_some() {
        etcd()?;
    }
    Ok(())
}

/// etcd's v3 API (a trimmed copy of its .proto files, ADR 0007): clients only, for controld's
/// fleets.
fn etcd() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "etcd/etcd/api/etcdserverpb/rpc.proto",
        "etcd/etcd/api/mvccpb/kv.proto",
        "etcd/etcd/api/authpb/auth.proto",
    ];
    println!("cargo:rerun-if-changed=etcd");
    let fds = protox::compile(files, ["etcd"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
