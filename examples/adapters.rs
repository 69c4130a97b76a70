//! Lists the GPU adapters kiln can see, with their limits.
fn main() -> Result<(), kiln::Error> {
    for a in kiln::list_adapters()? {
        println!("{a}");
    }
    let device = kiln::Device::gpu()?;
    println!("chosen: {}", device.name());
    Ok(())
}
