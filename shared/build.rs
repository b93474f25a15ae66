//! Compiles `proto/` into tonic/prost code when the `grpc` feature is on (needs `protoc`:
//! Debian's `protobuf-compiler`, which `./dev setup` installs). Without the feature nothing is
//! generated, so an auditor's build needs no protobuf tooling.

fn main() {
    println!("cargo:rerun-if-changed=proto");
    #[cfg(feature = "grpc")]
    {
        let protos = [
            "proto/budget/v1/types.proto",
            "proto/budget/v1/raft.proto",
            "proto/budget/v1/lease.proto",
            "proto/budget/v1/admin.proto",
            "proto/budget/v1/region_sync.proto",
            "proto/budget/v1/audit.proto",
        ];
        if let Err(e) = tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            // Connection helpers need tonic's transport; the servers add it themselves.
            .build_transport(false)
            .compile_protos(&protos, &["proto"])
        {
            panic!("compiling proto/ failed (is protoc installed? run ./dev setup): {e}");
        }
    }
}
