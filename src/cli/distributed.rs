//! `kiln train --distributed`: joining a data-parallel job, choosing each rank's device,
//! and leaving the job when a rank fails.
//!
//! Every rank runs the same `kiln train` command; rank 0 alone writes the run folder and
//! prints, the others train their share of each batch in silence.

use std::time::Duration;

use clap::ValueEnum;
use kiln::dist::AllReduce;
use kiln::{Device, Result};

/// How the ranks of a data-parallel job find each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Launcher {
    /// MPI: start every rank with `mpirun -np N kiln train ...` (kiln built with the
    /// `mpi` feature)
    Mpi,
}

/// This process's membership of a job.
pub struct Job {
    /// The collectives between the ranks.
    pub group: Box<dyn AllReduce>,
    /// Which of the machine's adapters this rank opens by default.
    pub adapter: usize,
}

impl Job {
    /// Joins the job that `launcher` started, waiting up to `timeout` at each exchange.
    pub fn join(launcher: Launcher, timeout: Duration) -> Result<Job> {
        match launcher {
            Launcher::Mpi => join_mpi(timeout),
        }
    }

    /// Whether this rank writes the run folder and prints (rank 0).
    pub fn leads(&self) -> bool {
        self.group.rank() == 0
    }

    /// The device `spec` names: `gpu` (the default) opens this rank's own adapter, so
    /// the ranks on one machine spread over its GPUs; `gpu:NAME` and `cpu` are as given.
    pub fn device(&self, spec: &str) -> Result<Device> {
        match spec {
            "gpu" | "" => Device::gpu_nth(self.adapter),
            _ => Device::from_name(spec),
        }
    }

    /// Leaves after an error without finalizing MPI, which would wait for the peers:
    /// the process exits non-zero and `mpirun` then ends the other ranks.
    pub fn abandon(self) {
        std::mem::forget(self.group);
    }
}

#[cfg(feature = "mpi")]
fn join_mpi(timeout: Duration) -> Result<Job> {
    let group = kiln::dist::mpi::MpiGroup::init()?.with_timeout(timeout);
    Ok(Job {
        adapter: group.node_rank(),
        group: Box::new(group),
    })
}

#[cfg(not(feature = "mpi"))]
fn join_mpi(_timeout: Duration) -> Result<Job> {
    Err(super::bad_arg(
        "--distributed",
        "mpi: this kiln was built without the `mpi` feature; rebuild it with `cargo build \
         --release --features mpi` (needs Open MPI and libclang) and start it with \
         `mpirun -np N kiln train ... --distributed mpi`",
    ))
}
