//! The `Sequential` builder: what a model is, before it has weights. The layers it
//! stacks live one per file in [`crate::nn::layers`].

pub use super::layers::{Conv, Dense, Embedding, Layer, MultiHeadAttention, Pool, Recurrent};
use crate::ops::batch_norm::BatchNorm;
use crate::ops::layer_norm::LayerNorm;
use crate::ops::Activation;

/// A stack of layers, each feeding the next: the description a model is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    /// Width of one input sample (channels * height * width for images).
    pub input: usize,
    /// The layers in order.
    pub layers: Vec<Layer>,
    /// (channels, height, width) of image samples, stored NCHW row-major.
    pub image: Option<(usize, usize, usize)>,
}

impl Sequential {
    /// An empty model taking samples of `input` features.
    pub fn new(input: usize) -> Sequential {
        Sequential {
            input,
            layers: Vec::new(),
            image: None,
        }
    }

    /// An empty model taking images of `channels` x `height` x `width` (NCHW).
    pub fn image(channels: usize, height: usize, width: usize) -> Sequential {
        Sequential {
            // Saturating: shapes() reports a product that overflows instead of panicking here.
            input: channels.saturating_mul(height).saturating_mul(width),
            layers: Vec::new(),
            image: Some((channels, height, width)),
        }
    }

    /// Appends a convolution of `filters` channels with a `k` x `k` kernel and 'same' padding.
    pub fn conv2d(self, filters: usize, k: usize) -> Sequential {
        self.add(Layer::Conv2d(Conv::new(filters, k).same()))
    }

    /// Appends a configured convolution.
    pub fn conv2d_with(self, conv: Conv) -> Sequential {
        self.add(Layer::Conv2d(conv))
    }

    /// Appends `k` x `k` max pooling with stride `k`.
    pub fn max_pool(self, k: usize) -> Sequential {
        self.add(Layer::MaxPool2d(Pool::new(k)))
    }

    /// Appends `k` x `k` average pooling with stride `k`.
    pub fn avg_pool(self, k: usize) -> Sequential {
        self.add(Layer::AvgPool2d(Pool::new(k)))
    }

    /// Appends global average pooling.
    pub fn global_avg_pool(self) -> Sequential {
        self.add(Layer::GlobalAvgPool)
    }

    /// Appends a flatten.
    pub fn flatten(self) -> Sequential {
        self.add(Layer::Flatten)
    }

    /// Appends a reshape of each sample to `shape` (Keras's `Reshape`, without the batch).
    pub fn reshape(self, shape: &[usize]) -> Sequential {
        self.add(Layer::Reshape(shape.to_vec()))
    }

    /// Appends any layer (Keras's `model.add`).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: Layer) -> Sequential {
        self.layers.push(layer);
        self
    }

    /// Appends a dense layer of `units` outputs (glorot-uniform weights, zero bias).
    pub fn dense(self, units: usize) -> Sequential {
        self.add(Layer::Dense(Dense::new(units)))
    }

    /// Appends a configured dense layer.
    pub fn dense_with(self, dense: Dense) -> Sequential {
        self.add(Layer::Dense(dense))
    }

    /// Appends an activation.
    pub fn activation(self, act: Activation) -> Sequential {
        self.add(Layer::Activation(act))
    }

    /// Appends ReLU.
    pub fn relu(self) -> Sequential {
        self.activation(Activation::Relu)
    }

    /// Appends leaky ReLU with this negative slope.
    pub fn leaky_relu(self, slope: f32) -> Sequential {
        self.activation(Activation::LeakyRelu(slope))
    }

    /// Appends sigmoid.
    pub fn sigmoid(self) -> Sequential {
        self.activation(Activation::Sigmoid)
    }

    /// Appends tanh.
    pub fn tanh(self) -> Sequential {
        self.activation(Activation::Tanh)
    }

    /// Appends GELU.
    pub fn gelu(self) -> Sequential {
        self.activation(Activation::Gelu)
    }

    /// Appends a softmax over the last axis (per position of [T, V] sequences).
    pub fn softmax(self) -> Sequential {
        self.add(Layer::Softmax)
    }

    /// Appends dropout with this rate.
    pub fn dropout(self, rate: f32) -> Sequential {
        self.add(Layer::Dropout(rate))
    }

    /// Appends batch normalisation with PyTorch's defaults (eps 1e-5, momentum 0.1).
    pub fn batch_norm(self) -> Sequential {
        self.batch_norm_with(BatchNorm::default())
    }

    /// Appends batch normalisation with this eps and momentum (PyTorch's convention:
    /// running = (1 - momentum) * running + momentum * batch; Keras's 0.99 is 0.01 here).
    pub fn batch_norm_with(self, bn: BatchNorm) -> Sequential {
        self.add(Layer::BatchNorm(bn))
    }

    /// Appends layer normalisation with PyTorch's default eps (1e-5).
    pub fn layer_norm(self) -> Sequential {
        self.layer_norm_with(LayerNorm::default())
    }

    /// Appends layer normalisation with this eps.
    pub fn layer_norm_with(self, ln: LayerNorm) -> Sequential {
        self.add(Layer::LayerNorm(ln))
    }

    /// Appends a token embedding: [T] ids in 0..vocab -> [T, dim] (nn.Embedding).
    pub fn embedding(self, vocab: usize, dim: usize) -> Sequential {
        self.add(Layer::Embedding(Embedding::new(vocab, dim)))
    }

    /// Appends learned positions, added to [T, dim] sequences of at most `max_positions`.
    pub fn positional_embedding(self, max_positions: usize) -> Sequential {
        self.add(Layer::PositionalEmbedding(max_positions))
    }

    /// Appends multi-head self-attention with `heads` heads over [T, D] samples (start
    /// with `.reshape(&[t, d])`).
    pub fn attention(self, heads: usize) -> Sequential {
        self.add(Layer::MultiHeadAttention(MultiHeadAttention::new(heads)))
    }

    /// Appends configured multi-head self-attention (causal, say).
    pub fn attention_with(self, attention: MultiHeadAttention) -> Sequential {
        self.add(Layer::MultiHeadAttention(attention))
    }

    /// Appends an LSTM of `units` returning its last state ([steps, features] samples in).
    pub fn lstm(self, units: usize) -> Sequential {
        self.add(Layer::Lstm(Recurrent::new(units)))
    }

    /// Appends a GRU of `units` returning its last state ([steps, features] samples in).
    pub fn gru(self, units: usize) -> Sequential {
        self.add(Layer::Gru(Recurrent::new(units)))
    }

    /// The shape of one input sample: [features], or [channels, height, width].
    pub(crate) fn input_shape(&self) -> Vec<usize> {
        match self.image {
            Some((c, h, w)) => vec![c, h, w],
            None => vec![self.input],
        }
    }

    /// Trainable values the built model will hold, computed without allocating them
    /// (e.g. to check a file's claim before building what it describes).
    pub fn param_count(&self) -> crate::Result<usize> {
        let shapes = self.shapes()?;
        let inputs = std::iter::once(self.input_shape()).chain(shapes.iter().cloned());
        let mut total = 0usize;
        for ((layer, input), output) in self.layers.iter().zip(inputs).zip(&shapes) {
            // shapes() checked every product below against usize.
            let count: usize = layer
                .def()
                .params(&input, output)
                .iter()
                .map(|p| p.len())
                .sum();
            total = total.saturating_add(count);
        }
        Ok(total)
    }

    /// Non-trainable values the built model will hold: batch norm's running mean and variance.
    pub fn buffer_count(&self) -> crate::Result<usize> {
        let shapes = self.shapes()?;
        Ok(self
            .layers
            .iter()
            .zip(&shapes)
            .filter_map(|(l, s)| l.def().buffer_channels(s))
            .map(|c| 2 * c)
            .sum())
    }

    /// Output width of each layer (all values of one sample), checking that layers chain.
    pub fn widths(&self) -> crate::Result<Vec<usize>> {
        Ok(self.shapes()?.iter().map(|s| s.iter().product()).collect())
    }

    /// Output shape of one sample after each layer: [features], [positions, features] or
    /// [channels, height, width].
    pub fn shapes(&self) -> crate::Result<Vec<Vec<usize>>> {
        use crate::Error;
        let mut shape = self.input_shape();
        let mut out = Vec::with_capacity(self.layers.len());
        if self.input == 0 || shape.contains(&0) {
            return Err(Error::arg(
                "Sequential input",
                "a model needs at least one input feature",
            ));
        }
        let values = |shape: &[usize]| shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if values(&shape).is_none() {
            return Err(Error::arg(
                "Sequential input",
                format!("{shape:?} holds more values than fit in usize"),
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let def = layer.def();
            shape = def.output_shape(&format!("layer {i} ({})", def.kind()), &shape)?;
            // widths() and the plan multiply these out: refuse what overflows.
            if values(&shape).is_none() {
                return Err(Error::shape(
                    format!("layer {i}"),
                    format!("output {shape:?} holds more values than fit in usize"),
                ));
            }
            out.push(shape.clone());
        }
        Ok(out)
    }
}
