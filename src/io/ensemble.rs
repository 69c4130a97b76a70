//! Loading an [`Ensemble`] from the run folders of its members.

use std::path::Path;

use crate::device::Device;
use crate::error::Result;
use crate::train::{Ensemble, Member};

impl Ensemble {
    /// Loads each checkpoint folder (see [`super::load_trainer`]) as a member named by
    /// its path. The members see the input as given: `kiln train` keeps a run's feature
    /// scaling beside the checkpoint, so callers scaling per run build the members with
    /// [`Member::with_scaler`] and [`Ensemble::new`] instead.
    pub fn load<P: AsRef<Path>>(dirs: &[P], device: &Device) -> Result<Ensemble> {
        let members = dirs
            .iter()
            .map(|d| {
                let d = d.as_ref();
                let trainer = super::load_trainer(d, device)?;
                Ok(Member::new(d.display().to_string(), trainer))
            })
            .collect::<Result<Vec<_>>>()?;
        Ensemble::new(members)
    }
}
