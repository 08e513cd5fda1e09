//! Generates the gRPC messages, server and client of `proto/cellar/v1/serving.proto`.

fn main() -> std::io::Result<()> {
    tonic_prost_build::configure()
        // Map fields decode into ordered maps so that values built from them (and their
        // encoded records) do not depend on hash order.
        .btree_map(".cellar.v1")
        .compile_protos(&["proto/cellar/v1/serving.proto"], &["proto"])
}
