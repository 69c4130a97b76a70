//! Crash safety: a process killed with SIGKILL at random moments while it writes
//! checkpoints always leaves one that loads, whole (weights and optimizer state from the
//! same save), and training resumes from it.
//!
//! The test re-runs its own binary as the child (`KILN_CRASH_CHILD` set), which saves
//! checkpoints in a loop until it is killed.

use kiln::{Device, FitOptions, Loss, Optimizer, Sequential};
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const KILLS: usize = 20;

fn trainer() -> kiln::Trainer {
    // About 3 MB of weights, so a save takes long enough to be killed half way.
    let model = Sequential::new(64)
        .dense(1024)
        .relu()
        .dense(512)
        .relu()
        .dense(10);
    let model = model.build(&Device::cpu(), 1).unwrap();
    model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-3),
            &[],
        )
        .unwrap()
}

/// The child: save k, k + 1, ... (after the last saved k) with every weight equal to k
/// and step = k, printing a line after each save.
fn save_forever(dir: &Path) -> ! {
    let mut t = trainer();
    let x = vec![0.5f32; 64];
    t.train_batch(&x, &[1.0]).unwrap(); // creates the optimizer state
    let first = kiln::io::load_trainer(dir, &Device::cpu()).map_or(1, |t| t.steps() + 1);
    for k in first.. {
        for p in t.model.params_mut() {
            let n = p.value.len();
            p.value.write(&vec![k as f32; n]).unwrap();
        }
        t.set_progress(k, k as usize);
        kiln::io::save(dir, &t).unwrap();
        println!("saved {k}");
    }
    unreachable!()
}

#[test]
fn killed_saves_leave_a_loadable_checkpoint() {
    if let Ok(dir) = std::env::var("KILN_CRASH_CHILD") {
        save_forever(Path::new(&dir));
    }
    let dir = std::env::temp_dir().join(format!("kiln-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut steps_seen = Vec::new();
    for _ in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "killed_saves_leave_a_loadable_checkpoint",
                "--exact",
                "--nocapture",
            ])
            .env("KILN_CRASH_CHILD", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Once this child has saved, it saves back to back: kill it at a random moment.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("saved") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the child stopped before saving"
            );
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..100_000)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let t = kiln::io::load_trainer(&dir, &Device::cpu())
            .expect("the checkpoint must load after a kill");
        let k = t.steps();
        assert!(k >= 1, "step {k}");
        for p in t.model.params() {
            let v = p.value.to_vec().unwrap();
            assert!(
                v.iter().all(|&w| w == k as f32),
                "{} is not from save {k}: {}",
                p.name,
                v[0]
            );
        }
        steps_seen.push(k);
    }
    println!("steps at the {KILLS} kills: {steps_seen:?}");
    // Training resumes from the last checkpoint.
    let mut t = kiln::io::load_trainer(&dir, &Device::cpu()).unwrap();
    let before = t.steps();
    let x = vec![0.1f32; 64 * 4];
    t.fit(&x, &[0.0, 1.0, 2.0, 3.0], FitOptions::new(1, 2))
        .unwrap();
    assert_eq!(t.steps(), before + 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run that diverges stops with an error naming the epoch and step and suggesting a
/// lower learning rate, and the checkpoint of the last good epoch stays as it was.
#[test]
fn divergence_stops_training_and_keeps_the_last_good_checkpoint() {
    if std::env::var("KILN_CRASH_CHILD").is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kiln-diverge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model = Sequential::new(4)
        .dense(8)
        .relu()
        .dense(3)
        .build(&Device::cpu(), 1)
        .unwrap();
    let mut t = model
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::sgd(0.1),
            &[],
        )
        .unwrap();
    let x: Vec<f32> = (0..64 * 4).map(|i| (i % 7) as f32 / 7.0).collect();
    let y: Vec<f32> = (0..64).map(|i| (i % 3) as f32).collect();
    let opts = || FitOptions {
        loss_every: 1,
        ..FitOptions::new(3, 16)
    };
    // The CLI's loop: save after every epoch.
    let mut run = t.start_fit(&x, &y, opts()).unwrap();
    run.next_epoch().unwrap().unwrap();
    kiln::io::save(&dir, run.trainer()).unwrap();
    run.finish().unwrap();
    let good: Vec<f32> = t.model.params()[0].value.to_vec().unwrap();
    // Weights blown up to overflow: the next epoch's loss is not finite.
    let n = t.model.params()[0].value.len();
    t.model.params_mut()[0].value.write(&vec![3e38; n]).unwrap();
    let mut run = t.start_fit(&x, &y, opts()).unwrap();
    let err = loop {
        match run.next_epoch() {
            Ok(Some(_)) => kiln::io::save(&dir, run.trainer()).unwrap(),
            Ok(None) => panic!("training with overflowing weights did not diverge"),
            Err(e) => break e,
        }
    };
    match &err {
        kiln::Error::Diverged { epoch, step, .. } => assert_eq!((*epoch, *step), (2, 1)),
        other => panic!("expected Diverged, got {other:?}"),
    }
    assert!(err.to_string().contains("lower the learning rate"), "{err}");
    let kept = kiln::io::load_trainer(&dir, &Device::cpu()).unwrap();
    assert_eq!(kept.model.params()[0].value.to_vec().unwrap(), good);
    assert_eq!(kept.epochs_done(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
