//! Generates the ONNX protobuf types (`kiln::io::onnx::proto`) from the vendored
//! proto/onnx.proto, parsed by protox so that no protoc binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // The proto comments hold indented examples that rustdoc would run as doctests.
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
