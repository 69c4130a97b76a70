//! [`AllReduce`] between processes and machines over MPI (feature `mpi`): rsmpi over the
//! system's MPI (on Debian, Open MPI: `openmpi-bin`, `libopenmpi-dev`, and `libclang-dev`
//! for the bindings). Launch with `mpirun -np N program ...`; each process is one rank.
//!
//! Every collective first meets the peers at a non-blocking barrier polled against a
//! deadline, so a peer that never joins (hung, or gone without the launcher noticing) is
//! reported as [`Error::Distributed`] after the group's timeout instead of a hang. Once
//! every rank has arrived, the data moves through MPI's blocking collective, whose
//! algorithms are the fastest (Open MPI's non-blocking all-reduce took 2 to 4 times as
//! long here); a peer process that dies during the transfer is noticed by `mpirun`, which
//! ends every rank of the job. After a timeout the group is failed (MPI cannot cancel the
//! barrier), and dropping it skips `MPI_Finalize` (which would wait for the missing peer),
//! so the process can report the error and exit non-zero, which makes `mpirun` end the
//! other ranks; [`MpiGroup::abort`] ends the whole job at once.

use super::AllReduce;
use crate::error::{Error, Result};
use mpi::collective::Root;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use std::ffi::c_int;
use std::time::{Duration, Instant};

/// This process's rank in `MPI_COMM_WORLD`.
pub struct MpiGroup {
    world: SimpleCommunicator,
    /// `None` once the group has failed: then MPI is deliberately not finalized.
    universe: Option<Universe>,
    rank: usize,
    size: usize,
    /// This rank's place among the ranks on its machine.
    node_rank: usize,
    timeout: Duration,
    /// The most elements one MPI call moves: MPI counts are C `int`s.
    max_count: usize,
    /// Why the group cannot go on, once it cannot.
    failure: Option<String>,
    /// The send and receive buffers of the all-reduces, kept between calls: MPI reduces
    /// from one buffer into another, and the caller's buffer gets the result only once
    /// the reduction has completed.
    bufs32: (Vec<f32>, Vec<f32>),
    bufs64: (Vec<f64>, Vec<f64>),
}

/// The element types that [`MpiGroup`] sums.
trait Element: Equivalence + Copy {
    fn bufs(g: &mut MpiGroup) -> &mut (Vec<Self>, Vec<Self>);
}

impl Element for f32 {
    fn bufs(g: &mut MpiGroup) -> &mut (Vec<Self>, Vec<Self>) {
        &mut g.bufs32
    }
}

impl Element for f64 {
    fn bufs(g: &mut MpiGroup) -> &mut (Vec<Self>, Vec<Self>) {
        &mut g.bufs64
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
        // Ranks that share memory share a machine; MPI_Init has already met them all.
        let node_rank = usize::try_from(world.split_shared(0).rank()).unwrap_or(0);
        Ok(MpiGroup {
            world,
            universe: Some(universe),
            rank,
            size,
            node_rank,
            timeout: Self::DEFAULT_TIMEOUT,
            max_count: c_int::MAX as usize,
            failure: None,
            bufs32: (Vec::new(), Vec::new()),
            bufs64: (Vec::new(), Vec::new()),
        })
    }

    /// This rank's index among the ranks on its machine (0 for the first): the GPU it
    /// should use where each machine has one per rank.
    pub fn node_rank(&self) -> usize {
        self.node_rank
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

    /// The world communicator, for collectives that [`AllReduce`] does not cover (they
    /// run without this group's deadline).
    pub fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// Ends every rank of the job at once (`MPI_Abort`) with exit status `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Waits, up to the deadline, until every rank has reached this collective: a
    /// non-blocking barrier, polled. On timeout the group fails.
    fn arrive(&mut self, what: &str) -> Result<()> {
        if let Some(why) = &self.failure {
            return Err(Error::dist(
                self.rank,
                format!("{what} cannot run: the group failed earlier: {why}"),
            ));
        }
        let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: a barrier has no buffers; `req` is written by MPI.
        let rc = unsafe { ffi::MPI_Ibarrier(self.world.as_raw(), &mut req) };
        if rc != ffi::MPI_SUCCESS as c_int {
            return Err(self.fail(format!("{what}: MPI_Ibarrier returned error code {rc}")));
        }
        self.wait(&mut req, what, "a peer rank did not join (hung, or died)")
    }

    /// Polls the active request `req` until it completes; past the deadline the group
    /// fails, naming `what` and the likely cause `why`.
    fn wait(&mut self, req: &mut ffi::MPI_Request, what: &str, why: &str) -> Result<()> {
        let start = Instant::now();
        let mut flag: c_int = 0;
        loop {
            // SAFETY: `req` is an active request started by the caller.
            let rc = unsafe { ffi::MPI_Test(req, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            if rc != ffi::MPI_SUCCESS as c_int {
                return Err(self.fail(format!("{what}: MPI_Test returned error code {rc}")));
            }
            if flag != 0 {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                return Err(self.fail(format!("{what} timed out after {:?}: {why}", self.timeout)));
            }
            // Poll (yielding the core) as MPI's blocking calls do; sleep between tests
            // only once a wait is long, such as for a peer's slower step.
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

    /// Sums `buf` over the ranks in place, in calls of at most `max_count` elements,
    /// each a non-blocking all-reduce polled against the deadline, so that a rank that
    /// stops inside the exchange fails the others instead of hanging them.
    fn sum<T: Element>(&mut self, buf: &mut [T], what: &str) -> Result<()> {
        self.arrive(what)?;
        let (mut send, mut recv) = std::mem::take(T::bufs(self));
        for chunk in buf.chunks_mut(self.max_count) {
            send.clear();
            send.extend_from_slice(chunk);
            recv.clear();
            recv.extend_from_slice(chunk);
            let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
            // SAFETY: both buffers hold `chunk.len()` elements of T's MPI datatype and stay
            // alive until the request completes: on a timeout they are leaked below.
            let rc = unsafe {
                ffi::MPI_Iallreduce(
                    send.as_ptr().cast(),
                    recv.as_mut_ptr().cast(),
                    chunk.len() as c_int,
                    T::equivalent_datatype().as_raw(),
                    ffi::RSMPI_SUM,
                    self.world.as_raw(),
                    &mut req,
                )
            };
            if rc != ffi::MPI_SUCCESS as c_int {
                return Err(self.fail(format!("{what}: MPI_Iallreduce returned error code {rc}")));
            }
            if let Err(e) = self.wait(&mut req, what, "a peer rank stopped inside the exchange") {
                // MPI may still write into them: never free memory under it.
                std::mem::forget(send);
                std::mem::forget(recv);
                return Err(e);
            }
            chunk.copy_from_slice(&recv);
        }
        *T::bufs(self) = (send, recv);
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
        self.sum(buf, "all_reduce_mean")?;
        let div = self.size as f32;
        buf.iter_mut().for_each(|x| *x /= div);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32]) -> Result<()> {
        self.arrive("broadcast")?;
        let root = self.world.process_at_rank(0);
        for chunk in buf.chunks_mut(self.max_count) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.arrive("barrier")
    }

    fn all_reduce_sum(&mut self, sums: &mut [f64]) -> Result<()> {
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
