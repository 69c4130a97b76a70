//! kiln::dist's in-process collectives (ThreadGroup): exact agreement across ranks,
//! accuracy against an f64 reference, and failures that end in a typed error, not a hang.

use kiln::dist::{AllReduce, Fingerprint, Member, ThreadGroup};
use kiln::Error;
use std::thread;
use std::time::{Duration, Instant};

/// Runs `f` on each member in its own thread and returns the results in rank order.
fn on_each<T: Send + 'static>(
    members: Vec<Member>,
    f: impl Fn(Member) -> T + Send + Sync + Copy + 'static,
) -> Vec<T> {
    let handles: Vec<_> = members
        .into_iter()
        .map(|m| thread::spawn(move || f(m)))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Rank `r`'s `i`-th input: awkward values of mixed sign and magnitude.
fn input(r: usize, i: usize) -> f32 {
    let x = ((i * 7919 + r * 104_729) % 1999) as f32 / 997.0 - 1.0;
    x * 10f32.powi((i % 7) as i32 - 3) + r as f32 * 1e-3
}

#[test]
fn mean_is_bit_identical_across_ranks_and_close_to_f64() {
    for n in [1usize, 2, 3, 4] {
        for len in [1usize, 3, 17, 1000, 1_000_003] {
            if n > 2 && len > 1000 {
                continue; // keep the big case to the sizes that matter
            }
            let results = on_each(ThreadGroup::new(n), move |mut m| {
                let mut buf: Vec<f32> = (0..len).map(|i| input(m.rank(), i)).collect();
                m.all_reduce_mean(&mut buf).unwrap();
                buf
            });
            for (r, res) in results.iter().enumerate() {
                assert_eq!(
                    res.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    results[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "rank {r} of {n}, len {len}: not bit-identical to rank 0"
                );
            }
            for (i, &got) in results[0].iter().enumerate() {
                let want = (0..n).map(|r| f64::from(input(r, i))).sum::<f64>() / n as f64;
                let scale = (0..n).map(|r| f64::from(input(r, i)).abs()).sum::<f64>() / n as f64;
                let tol =
                    f64::from(f32::EPSILON) * n as f64 * scale.max(f64::from(f32::MIN_POSITIVE));
                assert!(
                    (f64::from(got) - want).abs() <= tol,
                    "n {n}, len {len}, [{i}]: {got} vs {want} (tolerance {tol})"
                );
            }
        }
    }
}

#[test]
fn the_same_inputs_give_the_same_bits_whatever_the_thread_timing() {
    let run = |delay_rank: usize| {
        on_each(ThreadGroup::new(3), move |mut m| {
            if m.rank() == delay_rank {
                thread::sleep(Duration::from_millis(30));
            }
            let mut buf: Vec<f32> = (0..4099).map(|i| input(m.rank(), i)).collect();
            m.all_reduce_mean(&mut buf).unwrap();
            buf.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        })
    };
    let a = run(0);
    let b = run(2);
    assert_eq!(a, b);
}

#[test]
fn broadcast_copies_rank_0_and_sums_add_up() {
    let results = on_each(ThreadGroup::new(3), |mut m| {
        let r = m.rank();
        let mut w: Vec<f32> = (0..17).map(|i| input(r, i)).collect();
        m.broadcast(&mut w).unwrap();
        let mut sums = [r as f64, 1.0, 0.25 * r as f64];
        m.all_reduce_sum(&mut sums).unwrap();
        m.barrier().unwrap();
        // Many collectives in a row reuse the group's two slots.
        let mut x = [r as f32];
        for _ in 0..200 {
            m.all_reduce_mean(&mut x).unwrap();
        }
        (w, sums, x[0])
    });
    for (w, sums, x) in results {
        assert_eq!(w, (0..17).map(|i| input(0, i)).collect::<Vec<_>>());
        assert_eq!(sums, [3.0, 3.0, 0.75]);
        assert_eq!(x, 1.0);
    }
}

#[test]
fn a_dropped_member_fails_its_peers_at_once() {
    let timeout = Duration::from_secs(30);
    let mut members = ThreadGroup::with_timeout(3, timeout);
    let gone = members.pop().unwrap();
    let start = Instant::now();
    let waiter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(gone);
    });
    let errs = on_each(members, |mut m| {
        let mut buf = vec![1.0f32; 10];
        let e = m.all_reduce_mean(&mut buf).unwrap_err();
        // The group stays failed.
        let again = m.barrier().unwrap_err();
        (m.rank(), e, again)
    });
    waiter.join().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    for (rank, e, again) in errs {
        let msg = e.to_string();
        match e {
            Error::Distributed { rank: r, .. } => assert_eq!(r, rank),
            other => panic!("wrong variant: {other:?}"),
        }
        assert!(msg.contains("rank 2 left the group"), "{msg}");
        assert!(matches!(again, Error::Distributed { .. }));
    }
}

#[test]
fn a_panicking_peer_fails_the_others() {
    let errs = on_each(ThreadGroup::new(2), |mut m| {
        if m.rank() == 1 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _held = m;
                panic!("replica 1 fails");
            }));
            assert!(r.is_err());
            return None;
        }
        Some(m.all_reduce_sum(&mut [1.0]).unwrap_err().to_string())
    });
    let msg = errs[0].clone().unwrap();
    assert!(
        msg.contains("rank 0") && msg.contains("rank 1 left the group (its thread panicked)"),
        "{msg}"
    );
}

#[test]
fn a_peer_that_never_joins_times_out() {
    let timeout = Duration::from_millis(300);
    let mut members = ThreadGroup::with_timeout(2, timeout);
    let idle = members.pop().unwrap();
    let mut m = members.pop().unwrap();
    let start = Instant::now();
    let e = m.all_reduce_mean(&mut [1.0, 2.0]).unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "{took:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("rank 0") && msg.contains("ranks [1]") && msg.contains("did not join"),
        "{msg}"
    );
    // The idle member now finds the group failed at once.
    let mut idle = idle;
    let start = Instant::now();
    assert!(idle.barrier().is_err());
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn different_collectives_or_lengths_are_an_error_on_every_rank() {
    let errs = on_each(ThreadGroup::new(2), |mut m| {
        let mut buf = vec![0.0f32; 3 + m.rank()];
        m.all_reduce_mean(&mut buf).unwrap_err().to_string()
    });
    for msg in errs {
        assert!(
            msg.contains("rank 0: Mean of 3 values, rank 1: Mean of 4 values"),
            "{msg}"
        );
    }
}

#[test]
fn a_fingerprint_mismatch_names_the_ranks() {
    let results = on_each(ThreadGroup::new(3), |mut m| {
        let batch = if m.rank() == 2 { 64 } else { 32 };
        let print = Fingerprint::new().dims(&[784, 256]).num(60_000).num(batch);
        let same = Fingerprint::new().dims(&[784, 256]).num(60_000).num(32);
        m.check_fingerprint("model", same.finish()).unwrap();
        m.check_fingerprint("model, data set and batch size", print.finish())
    });
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Err(Error::RankMismatch {
                rank: r,
                ranks,
                what,
                ..
            }) => {
                assert_eq!(
                    (r, ranks, what.as_str()),
                    (rank, vec![2], "model, data set and batch size")
                );
            }
            other => panic!("rank {rank}: {other:?}"),
        }
    }
}

#[test]
fn fingerprints_tell_shapes_apart() {
    let a = Fingerprint::new().dims(&[2, 3]).dims(&[4]).finish();
    let b = Fingerprint::new().dims(&[2]).dims(&[3, 4]).finish();
    assert_ne!(a, b);
    assert_eq!(a, Fingerprint::new().dims(&[2, 3]).dims(&[4]).finish());
}

/// `Device::gpu_nth` gives every rank an adapter, wrapping around past the last one.
#[test]
fn every_rank_gets_an_adapter_wrapping_around() {
    let names: Vec<String> = kiln::list_adapters()
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    for n in [0, 1, names.len(), 2 * names.len() + 1] {
        let device = kiln::Device::gpu_nth(n).unwrap();
        let name = device.name();
        assert!(
            names.iter().any(|a| name.starts_with(a)),
            "{name} not in {names:?}"
        );
    }
}
