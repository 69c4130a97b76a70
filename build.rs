//! Generates the protobuf types of the vendored protos: ONNX (`kiln::io::onnx::proto`)
//! from proto/onnx.proto and TensorBoard's (`kiln::io::tensorboard::proto`) from
//! proto/tensorboard/, parsed by protox so that no protoc binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "onnx.proto",
        "tensorboard/event.proto",
        "tensorboard/hparams.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // The proto comments hold indented examples that rustdoc would run as doctests.
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
