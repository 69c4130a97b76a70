//! [`AllReduce`] between processes and machines over MPI (feature `mpi`): rsmpi over the
//! system's MPI (on Debian, Open MPI: `openmpi-bin`, `libopenmpi-dev`, and `libclang-dev`
//! for the bindings). Launch with `mpirun -np N program ...`; each process is one rank.
//!
//! Every collective is started non-blocking and polled against a deadline, so a peer that
//! never joins (hung, or gone without the launcher noticing) is reported as
//! [`Error::Distributed`] after the group's timeout instead of a hang. A peer process that
//! dies is normally noticed sooner by `mpirun` itself, which then ends every rank of the
//! job. MPI cannot cancel a collective: after a timeout the group is failed, its staging
//! buffers are left to MPI, and dropping it skips `MPI_Finalize` (which would wait for the
//! missing peer), so the process can report the error and exit non-zero, which makes
//! `mpirun` end the other ranks; [`MpiGroup::abort`] ends the whole job at once.

use super::AllReduce;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

/// This process's rank in `MPI_COMM_WORLD`.
pub struct MpiGroup {
    world: SimpleCommunicator,
    /// `None` once the group has failed: then MPI is deliberately not finalized.
    universe: Option<Universe>,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// The most elements one MPI call moves: MPI counts are C `int`s.
    max_count: usize,
    /// Why the group cannot go on, once it cannot.
    failure: Option<String>,
    /// MPI owns these while a collective runs, and keeps them (leaked) if one is abandoned
    /// at its deadline.
    staging: Staging,
}

/// Send and receive staging buffers of each element type.
#[derive(Default)]
struct Staging {
    f32s: (Vec<f32>, Vec<f32>),
    f64s: (Vec<f64>, Vec<f64>),
}

/// The element types that [`MpiGroup`] sums.
trait Element: Equivalence + Copy + Default {
    fn stage(s: &mut Staging) -> &mut (Vec<Self>, Vec<Self>);
}

impl Element for f32 {
    fn stage(s: &mut Staging) -> &mut (Vec<Self>, Vec<Self>) {
        &mut s.f32s
    }
}

impl Element for f64 {
    fn stage(s: &mut Staging) -> &mut (Vec<Self>, Vec<Self>) {
        &mut s.f64s
    }
}

impl MpiGroup {
    /// How long a collective waits, by default, for every rank to join before it fails:
    /// long enough for a slow training step, and for the first collective, which also
    /// waits for every rank to start and open its device.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

    /// Initializes MPI (once per process) and joins `MPI_COMM_WORLD`.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| {
            Error::dist(
                0,
                "MPI was already initialized in this process (create one MpiGroup per process)",
            )
        })?;
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let (rank, size) = match (usize::try_from(rank), usize::try_from(size)) {
            (Ok(r), Ok(s)) if r < s => (r, s),
            _ => {
                return Err(Error::dist(
                    0,
                    format!("MPI reported rank {rank} of {size}"),
                ))
            }
        };
        Ok(MpiGroup {
            world,
            universe: Some(universe),
            rank,
            size,
            timeout: Self::DEFAULT_TIMEOUT,
            max_count: c_int::MAX as usize,
            failure: None,
            staging: Staging::default(),
        })
    }

    /// Sets how long each collective waits for every rank before it fails.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the most elements one MPI call moves (at most, and by default, `i32::MAX`):
    /// longer buffers go in several calls. Smaller values exercise the chunking.
    pub fn with_max_count(mut self, max_count: usize) -> Self {
        self.max_count = max_count.clamp(1, c_int::MAX as usize);
        self
    }

    /// Ends every rank of the job at once (`MPI_Abort`) with exit status `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn ready(&self, what: &str) -> Result<()> {
        match &self.failure {
            Some(why) => Err(Error::dist(
                self.rank,
                format!("{what} cannot run: the group failed earlier: {why}"),
            )),
            None => Ok(()),
        }
    }

    /// Waits for `req` until the deadline. On timeout the group fails and the staging
    /// buffers, which MPI may still write, are leaked rather than freed.
    fn finish(&mut self, mut req: ffi::MPI_Request, what: &str, start: Instant) -> Result<()> {
        let mut flag: c_int = 0;
        loop {
            // SAFETY: `req` is an active request started on buffers that `self` owns and
            // does not touch until it completes (or leaks them below).
            let rc = unsafe { ffi::MPI_Test(&mut req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            if rc != ffi::MPI_SUCCESS as c_int {
                return Err(self.fail(format!("{what}: MPI_Test failed with code {rc}")));
            }
            if flag != 0 {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                std::mem::forget(std::mem::take(&mut self.staging));
                return Err(self.fail(format!(
                    "{what} timed out after {:?}: a peer rank did not join (hung, or died)",
                    self.timeout
                )));
            }
            // Poll (yielding the core) as MPI's blocking calls do, since each test also
            // drives the transfer; sleep between tests only once a wait is long, such as
            // for a peer's slower step.
            if waited < Duration::from_millis(100) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn fail(&mut self, why: String) -> Error {
        self.failure = Some(why.clone());
        Error::dist(self.rank, why)
    }

    fn check(&mut self, rc: c_int, what: &str) -> Result<()> {
        if rc == ffi::MPI_SUCCESS as c_int {
            Ok(())
        } else {
            Err(self.fail(format!("{what}: MPI returned error code {rc}")))
        }
    }

    /// Sums `buf` over the ranks in place, in calls of at most `max_count` elements.
    fn sum<T: Element>(&mut self, buf: &mut [T], what: &str) -> Result<()> {
        let start = Instant::now();
        for chunk in buf.chunks_mut(self.max_count) {
            let (send, recv) = T::stage(&mut self.staging);
            send.clear();
            send.extend_from_slice(chunk);
            recv.resize(chunk.len(), T::default());
            let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
            // SAFETY: both staging buffers hold `chunk.len()` (<= c_int::MAX) elements and
            // stay alive and untouched until `finish` returns (or are leaked by it).
            let rc = unsafe {
                ffi::MPI_Iallreduce(
                    send.as_ptr() as *const c_void,
                    recv.as_mut_ptr() as *mut c_void,
                    chunk.len() as c_int,
                    T::equivalent_datatype().as_raw(),
                    SystemOperation::sum().as_raw(),
                    self.world.as_raw(),
                    &mut req,
                )
            };
            self.check(rc, what)?;
            self.finish(req, what, start)?;
            chunk.copy_from_slice(&T::stage(&mut self.staging).1);
        }
        Ok(())
    }
}

impl AllReduce for MpiGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<()> {
        self.ready("all_reduce_mean")?;
        self.sum(buf, "all_reduce_mean")?;
        let div = self.size as f32;
        buf.iter_mut().for_each(|x| *x /= div);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32]) -> Result<()> {
        self.ready("broadcast")?;
        let start = Instant::now();
        for chunk in buf.chunks_mut(self.max_count) {
            let (send, _) = &mut self.staging.f32s;
            send.clear();
            send.extend_from_slice(chunk);
            let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
            // SAFETY: the staging buffer holds `chunk.len()` f32s and stays alive and
            // untouched until `finish` returns.
            let rc = unsafe {
                ffi::MPI_Ibcast(
                    send.as_mut_ptr() as *mut c_void,
                    chunk.len() as c_int,
                    f32::equivalent_datatype().as_raw(),
                    0,
                    self.world.as_raw(),
                    &mut req,
                )
            };
            self.check(rc, "broadcast")?;
            self.finish(req, "broadcast", start)?;
            chunk.copy_from_slice(&self.staging.f32s.0);
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.ready("barrier")?;
        let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: a barrier has no buffers.
        let rc = unsafe { ffi::MPI_Ibarrier(self.world.as_raw(), &mut req) };
        self.check(rc, "barrier")?;
        self.finish(req, "barrier", Instant::now())
    }

    fn all_reduce_sum(&mut self, sums: &mut [f64]) -> Result<()> {
        self.ready("all_reduce_sum")?;
        self.sum(sums, "all_reduce_sum")
    }
}

impl Drop for MpiGroup {
    /// Finalizes MPI, unless the group failed: `MPI_Finalize` would then wait for the
    /// missing peer, so it is skipped and the process exits without it (which `mpirun`
    /// takes as a failed rank, ending the others).
    fn drop(&mut self) {
        if self.failure.is_some() {
            std::mem::forget(self.universe.take());
        }
    }
}
