//! Compiling pipelines on a spare core, for CPU adapters on Vulkan.
//!
//! llvmpipe turns a pipeline into machine code at its first dispatch, one kernel after
//! another on the thread that submits, so the first training steps on a fresh machine
//! wait for each new kernel in turn while the other cores idle. Instead, helper
//! processes started from the same executable (one per core, up to `MAX_HELPERS`; the
//! helper's side is `compile_helper`) each take the next new kernel as it is first
//! dispatched; before a submission that holds new kernels this process waits for their
//! helpers, then finds their machine code in Mesa's shader cache.
//!
//! Processes rather than more devices in this one: two llvmpipe devices in one process
//! ended some runs in heap corruption at exit on Mesa 22.3, and whatever befalls a helper
//! process stays there. A helper that dies or hangs costs at most `WAIT`: its kernels
//! are then compiled by the training process, as without helpers. They need the
//! executable's cooperation, so they run only where `main` calls [`compile_helper_main`]
//! first (the `kiln` command does) or [`use_compile_helper`] names such an executable.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::compile_helper::{serve, Wire};
use super::gpu::Kernel;

/// The first argument that makes a kiln executable a compile helper.
const HELPER_ARG: &str = "--kiln-compile-helper";

/// The most buffer bytes one compilation may make a helper allocate.
const MAX_BYTES: u64 = 64 << 20;

/// The most helper processes one device starts.
const MAX_HELPERS: usize = 4;

/// The longest a submission waits for its kernels' helpers.
const WAIT: Duration = Duration::from_secs(60);

/// The executable that serves as a helper, once one has been named.
static HELPER_EXE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Call first in `main`. In a compile helper that kiln started from this executable it
/// serves kiln's requests and returns `true`: return from `main` at once. Otherwise it
/// returns `false`, and from then on CPU adapters opened later may start such helpers.
pub fn compile_helper_main() -> bool {
    if std::env::args_os().nth(1).is_some_and(|a| a == HELPER_ARG) {
        serve();
        return true;
    }
    if let Ok(exe) = std::env::current_exe() {
        use_compile_helper(exe);
    }
    false
}

/// Names the executable CPU adapters opened from now on start as their compile helper:
/// one whose `main` calls [`compile_helper_main`] first, such as the `kiln` command (for
/// programs that embed kiln without calling it in their own `main`).
pub fn use_compile_helper(exe: PathBuf) {
    if let Ok(mut slot) = HELPER_EXE.lock() {
        *slot = Some(exe);
    }
}

/// What the training process knows of its helpers, behind one lock.
#[derive(Default)]
struct Pool {
    /// Each helper's input (lines for its writer thread); `None` once it has gone.
    inputs: Vec<Option<Sender<Vec<u8>>>>,
    /// The job each helper is compiling.
    busy: Vec<Option<u64>>,
    /// Jobs waiting for a free helper, as JSON lines.
    queue: VecDeque<(u64, Vec<u8>)>,
    /// Jobs finished, or abandoned with their helper.
    done: HashSet<u64>,
    /// Pipelines the helpers reported compiled.
    compiled: u64,
    /// The next job's id.
    next_id: u64,
}

impl Pool {
    fn alive(&self) -> usize {
        self.inputs.iter().flatten().count()
    }

    /// Gives `line` to helper `i`; false (and the helper counted gone) if it has gone.
    fn give(&mut self, i: usize, id: u64, line: Vec<u8>) -> Result<(), Vec<u8>> {
        let Some(input) = self.inputs[i].as_ref() else {
            return Err(line);
        };
        if let Err(e) = input.send(line) {
            self.inputs[i] = None;
            return Err(e.0);
        }
        self.busy[i] = Some(id);
        Ok(())
    }

    /// Counts helper `i` gone: its job is left to the training process, and so are the
    /// waiting ones if it was the last.
    fn gone(&mut self, i: usize) {
        self.inputs[i] = None;
        if let Some(id) = self.busy[i].take() {
            self.done.insert(id);
        }
        self.assign();
    }

    /// Gives the next waiting jobs to free helpers.
    fn assign(&mut self) {
        for i in 0..self.inputs.len() {
            while self.busy[i].is_none() && self.inputs[i].is_some() {
                let Some((id, line)) = self.queue.pop_front() else {
                    return;
                };
                if let Err(line) = self.give(i, id, line) {
                    self.queue.push_front((id, line));
                }
            }
        }
        if self.alive() == 0 {
            // Nobody is left to compile them: the training process will.
            let ids = self.queue.drain(..).map(|(id, _)| id);
            self.done.extend(ids.collect::<Vec<_>>());
        }
    }
}

/// The training process's end of its helpers.
pub(super) struct Precompiler {
    pool: Arc<(Mutex<Pool>, Condvar)>,
    children: Vec<Child>,
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

impl Precompiler {
    /// Helpers for the adapter `info` describes, where they pay and can run: a CPU
    /// adapter on Vulkan, more than one core, Mesa's shader cache not switched off,
    /// `KILN_PRECOMPILE` not `0`, and an executable that serves as a helper.
    pub(super) fn start(info: &wgpu::AdapterInfo) -> Option<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wanted = info.device_type == wgpu::DeviceType::Cpu
            && info.backend == wgpu::Backend::Vulkan
            && cores > 1
            && crate::config::precompile()
            && !crate::config::mesa_cache_disabled();
        let exe = HELPER_EXE.lock().ok()?.clone().filter(|_| wanted)?;
        let pool = Arc::new((Mutex::new(Pool::default()), Condvar::new()));
        let mut children = Vec::new();
        for i in 0..cores.min(MAX_HELPERS) {
            let Ok(mut child) = Command::new(&exe)
                .arg(HELPER_ARG)
                .env("KILN_ADAPTER", &info.name)
                .env("KILN_BACKEND", "vulkan")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            else {
                break;
            };
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                break;
            };
            let (lines, inbox) = mpsc::channel();
            {
                let mut p = lock(&pool.0);
                p.inputs.push(Some(lines));
                p.busy.push(None);
            }
            children.push(child);
            // Pipes are written and read on threads of their own: a helper that stops
            // reading blocks its writer, never this process.
            let (writer, listener) = (pool.clone(), pool.clone());
            let threads = std::thread::Builder::new()
                .name("kiln compile helper".into())
                .spawn(move || write_to(i, stdin, &inbox, &writer))
                .and_then(|_| {
                    std::thread::Builder::new()
                        .name("kiln compile helper".into())
                        .spawn(move || listen(i, stdout, &listener))
                });
            if threads.is_err() {
                lock(&pool.0).gone(i);
            }
        }
        (!children.is_empty()).then_some(Precompiler { pool, children })
    }

    /// Pipelines the helpers have compiled so far.
    pub(super) fn compiled(&self) -> u64 {
        lock(&self.pool.0).compiled
    }

    /// Hands a helper the new pipeline of `k` with `constants`, as its first dispatch
    /// uses it (parameters `params`, buffers of `sizes` bytes), unless that binds over
    /// `MAX_BYTES`; its job id. llvmpipe compiles each pipeline once, at that dispatch.
    pub(super) fn job(
        &self,
        k: &Kernel,
        constants: &[(&'static str, f64)],
        params: &[u8],
        sizes: Vec<u64>,
    ) -> Option<u64> {
        let mut pool = lock(&self.pool.0);
        if pool.alive() == 0 || sizes.iter().sum::<u64>() > MAX_BYTES {
            return None;
        }
        let id = pool.next_id;
        pool.next_id += 1;
        let wire = Wire {
            id,
            source: k.source.into(),
            entry: k.entry.into(),
            inputs: k.inputs,
            outputs: k.outputs,
            bounds_checks: k.bounds_checks,
            constants: constants.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            params: params.to_vec(),
            sizes,
        };
        let mut line = serde_json::to_vec(&wire).ok()?;
        line.push(b'\n');
        pool.queue.push_back((id, line));
        pool.assign();
        Some(id)
    }

    /// Waits until the helpers have compiled (or given up) every job in `ids`, at most
    /// `WAIT`.
    pub(super) fn wait(&self, ids: &[u64]) {
        let deadline = Instant::now() + WAIT;
        let (pool, changed) = &*self.pool;
        let mut p = lock(pool);
        while !ids.iter().all(|id| p.done.contains(id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            p = match changed.wait_timeout(p, left) {
                Ok((p, _)) => p,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Reads helper `i`'s reports: each finished job frees it for the next. At its end (it
/// exited or died) its job counts as done, for the training process to compile.
fn listen(i: usize, stdout: ChildStdout, pool: &(Mutex<Pool>, Condvar)) {
    for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
        // Anything but the id of its job is not an answer.
        let mut p = lock(&pool.0);
        let Some(id) = line
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|id| p.busy[i] == Some(*id))
        else {
            continue;
        };
        p.done.insert(id);
        p.compiled += 1;
        p.busy[i] = None;
        p.assign();
        drop(p);
        pool.1.notify_all();
    }
    lock(&pool.0).gone(i);
    pool.1.notify_all();
}

/// Writes the lines for helper `i` to its input until they stop (the helper has gone or
/// the device is dropped, which closes the input and so ends the helper).
fn write_to(
    i: usize,
    mut stdin: ChildStdin,
    lines: &Receiver<Vec<u8>>,
    pool: &(Mutex<Pool>, Condvar),
) {
    for line in lines {
        if stdin.write_all(&line).and_then(|()| stdin.flush()).is_err() {
            lock(&pool.0).gone(i);
            pool.1.notify_all();
            return;
        }
    }
}

impl Drop for Precompiler {
    /// Closes the helpers' inputs (their writer threads end and drop them), which ends
    /// each after the compilation under way (a killed one could leave a half-written
    /// cache file behind), and reaps them on a thread of their own so that nothing here
    /// waits.
    fn drop(&mut self) {
        let mut p = lock(&self.pool.0);
        p.inputs.iter_mut().for_each(|i| *i = None);
        p.queue.clear();
        drop(p);
        let mut children = std::mem::take(&mut self.children);
        let _ = std::thread::Builder::new()
            .name("kiln compile helper reaper".into())
            .spawn(move || children.iter_mut().for_each(|c| drop(c.wait())));
    }
}
