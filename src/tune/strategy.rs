//! How a search picks its trials: every point of a grid, random draws (seeded), or
//! successive halving (many trials for a few epochs, the best fraction for more).

use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::space::{Config, Space};
use crate::error::{Result, TuneError};

/// Trials of a random search or successive halving when no trial budget is given.
pub const DEFAULT_TRIALS: usize = 9;
/// Grids larger than this are not listed in full to draw from them without repeats.
const MAX_LISTED: usize = 100_000;

/// A search strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Every combination, ranges cut into `points` values each.
    Grid {
        /// Values per range.
        points: usize,
    },
    /// Configurations drawn at random (without repeats from a countable space).
    Random {
        /// Seed of the draws.
        seed: u64,
    },
    /// Successive halving: random configurations, each rung keeps the best 1/`eta` of
    /// the trials and trains them `eta` times longer, from their checkpoints.
    Halving {
        /// Seed of the draws.
        seed: u64,
        /// The factor by which each rung cuts the trials and stretches the epochs (≥ 2).
        eta: usize,
    },
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Strategy, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grid" => Ok(Strategy::Grid { points: 3 }),
            "random" => Ok(Strategy::Random { seed: 0 }),
            "halving" | "hyperband" | "successive_halving" => {
                Ok(Strategy::Halving { seed: 0, eta: 3 })
            }
            other => Err(format!("'{other}' is none of grid, random, halving")),
        }
    }
}

impl Strategy {
    /// The strategy's name, as `--strategy` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Grid { .. } => "grid",
            Strategy::Random { .. } => "random",
            Strategy::Halving { .. } => "halving",
        }
    }

    /// The configurations to try, in trial order, at most `limit` of them (a grid: all
    /// its points without a limit; the others [`DEFAULT_TRIALS`]). The list for a
    /// larger limit starts with the list for a smaller one, so a search resumed with a
    /// larger trial budget keeps the trials it ran.
    pub fn candidates(&self, space: &Space, limit: Option<usize>) -> Result<Vec<Config>> {
        space.check()?;
        if limit == Some(0) {
            return Err(TuneError::ZeroBudget("trial").into());
        }
        match *self {
            Strategy::Grid { points } => {
                let mut all = grid(space, points);
                all.truncate(limit.unwrap_or(usize::MAX));
                Ok(all)
            }
            Strategy::Random { seed } | Strategy::Halving { seed, .. } => {
                let n = limit.unwrap_or(DEFAULT_TRIALS);
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                match space.size().filter(|&s| s <= MAX_LISTED) {
                    Some(_) => {
                        let mut all = grid(space, 0);
                        all.shuffle(&mut rng);
                        all.truncate(n);
                        Ok(all)
                    }
                    None => Ok((0..n)
                        .map(|_| {
                            let values = space
                                .params
                                .iter()
                                .map(|(h, d)| (*h, d.sample(*h, &mut rng)));
                            Config(values.collect())
                        })
                        .collect()),
                }
            }
        }
    }

    /// Successive halving's rungs for `trials` trials of at most `epochs` epochs: each
    /// rung's epochs in all and how many trials train up to them. One rung of every
    /// trial for the other strategies.
    pub fn rungs(&self, trials: usize, epochs: usize) -> Vec<Rung> {
        let Strategy::Halving { eta, .. } = *self else {
            return vec![Rung {
                epochs,
                keep: trials,
            }];
        };
        let eta = eta.max(2);
        // The number of cuts: as many as leave a trial and an epoch at the first rung.
        let mut cuts = 0u32;
        while let Some(p) = eta.checked_pow(cuts + 1) {
            if p > trials || epochs / p == 0 {
                break;
            }
            cuts += 1;
        }
        (0..=cuts)
            .map(|i| {
                let shrink = eta.pow(cuts - i);
                Rung {
                    epochs: (epochs / shrink).max(1),
                    keep: trials.div_ceil(eta.pow(i)),
                }
            })
            .collect()
    }
}

/// One rung of a search: how many trials train, and up to how many epochs in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rung {
    /// Epochs in all that the trials of this rung reach.
    pub epochs: usize,
    /// Trials that train in this rung.
    pub keep: usize,
}

/// Every combination of the space's values (ranges cut into `points`; with 0, ranges of
/// whole numbers give every number), the first hyperparameter varying slowest.
fn grid(space: &Space, points: usize) -> Vec<Config> {
    let axes: Vec<_> = space
        .params
        .iter()
        .map(|(h, d)| {
            let n = match (points, d) {
                (0, super::space::Domain::Range { low, high, .. }) => {
                    (high.round() - low.round()) as usize + 1
                }
                (0, _) => 3,
                (p, _) => p,
            };
            (*h, d.grid(*h, n))
        })
        .collect();
    let mut out = vec![Config::default()];
    for (h, values) in axes {
        out = out
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut next = c.clone();
                    next.0.push((h, v.clone()));
                    next
                })
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(params: &[&str]) -> Space {
        let mut s = Space::new();
        for p in params {
            s.param(p).unwrap();
        }
        s
    }

    #[test]
    fn grids_cover_every_combination() {
        let s = space(&["units=8,16", "lr=log:1e-3:1e-1", "optimizer=adam,sgd"]);
        let g = Strategy::Grid { points: 3 }.candidates(&s, None).unwrap();
        assert_eq!(g.len(), 12);
        assert_eq!(g[0].to_string(), "units=8 lr=0.001 optimizer=adam");
        assert_eq!(g[11].to_string(), "units=16 lr=0.1 optimizer=sgd");
        assert_eq!(
            Strategy::Grid { points: 3 }
                .candidates(&s, Some(5))
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn random_draws_extend_and_do_not_repeat() {
        let s = space(&["units=8,16,32", "depth=1:3"]);
        let r = Strategy::Random { seed: 7 };
        let all = r.candidates(&s, Some(9)).unwrap();
        let two = r.candidates(&s, Some(2)).unwrap();
        assert_eq!(&all[..2], &two[..]);
        for (i, a) in all.iter().enumerate() {
            assert!(!all[..i].contains(a), "{a} drawn twice");
        }
        let c = space(&["lr=log:1e-4:1e-1"]);
        let five = r.candidates(&c, Some(5)).unwrap();
        assert_eq!(&r.candidates(&c, Some(8)).unwrap()[..5], &five[..]);
    }

    #[test]
    fn halving_cuts_trials_and_stretches_epochs() {
        let h = Strategy::Halving { seed: 0, eta: 3 };
        let rungs: Vec<(usize, usize)> = h.rungs(9, 9).iter().map(|r| (r.epochs, r.keep)).collect();
        assert_eq!(rungs, [(1, 9), (3, 3), (9, 1)]);
        let h2 = Strategy::Halving { seed: 0, eta: 2 };
        let rungs: Vec<(usize, usize)> =
            h2.rungs(5, 3).iter().map(|r| (r.epochs, r.keep)).collect();
        assert_eq!(rungs, [(1, 5), (3, 3)]);
        assert_eq!(
            Strategy::Grid { points: 3 }.rungs(4, 6),
            [Rung { epochs: 6, keep: 4 }]
        );
    }

    #[test]
    fn empty_spaces_and_zero_budgets_are_errors() {
        let r = Strategy::Random { seed: 0 };
        assert!(matches!(
            r.candidates(&Space::new(), None),
            Err(crate::Error::Tune(TuneError::EmptySpace))
        ));
        assert!(matches!(
            r.candidates(&space(&["units=4"]), Some(0)),
            Err(crate::Error::Tune(TuneError::ZeroBudget("trial")))
        ));
    }
}
