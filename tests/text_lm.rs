//! A per-position language model (token and position embeddings, then dense layers: no
//! attention, so it predicts each next character from the current one and its place)
//! learns Shakespeare's characters to a validation loss clearly under the unigram
//! entropy, the best loss of a model that ignores its input. Skips, saying why, where
//! ../shared/data/shakespeare is absent.

mod common;

use kiln::data::text::windows_of;
use kiln::{FitOptions, Loss, Optimizer, Sequential};

#[test]
fn a_character_model_learns_under_the_unigram_entropy() {
    let Some(text) = common::shakespeare() else {
        return;
    };
    // 200k characters from the middle of the works (the corpus is ASCII).
    let slice = &text[1_000_000..1_200_000];
    let context = 32;
    let data = windows_of(slice, None, context, context).unwrap();
    let vocab = data.vocab.len();
    let unigram = common::unigram_entropy(&data.train.y, vocab);

    let mut t = Sequential::new(context)
        .embedding(vocab, 32)
        .positional_embedding(context)
        .dense(64)
        .relu()
        .dense(vocab)
        .build(&common::gpu(), 1)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[],
        )
        .unwrap();
    t.fit(&data.train.x, &data.train.y, FitOptions::new(3, 64))
        .unwrap();
    let val = t.evaluate(&data.valid.x, &data.valid.y, 256).unwrap().loss;
    eprintln!("vocabulary {vocab}, unigram entropy {unigram:.3} nats, validation loss {val:.3}");
    assert!(
        val < unigram - 0.3,
        "validation loss {val:.3} is not clearly under the unigram entropy {unigram:.3}"
    );
}
