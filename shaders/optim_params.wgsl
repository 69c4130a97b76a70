// The uniform of every optimizer kernel (optim_update.wgsl and optim.wgsl).

struct Params {
    n: u32,
    // 1 on the first step (t == 1): state is initialised here, whatever the buffers hold.
    first: u32,
    // sumsq: where this gradient's partial sums start in y.
    base: u32,
    // The learning rate (Adagrad: already decayed, clr).
    lr: f32,
    wd: f32,
    // SGD: momentum mu; Adam/AdamW: beta1; RMSprop: alpha.
    a: f32,
    // SGD: dampening tau; Adam/AdamW: beta2; RMSprop: momentum mu; Adagrad: initial accumulator.
    b: f32,
    eps: f32,
    // Adam/AdamW: 1 - beta1^t and sqrt(1 - beta2^t).
    bc1: f32,
    bc2_sqrt: f32,
    max_norm: f32,
    // update4: the value counts of tensors 1 to 3 (tensor 0's is n).
    n1: u32,
    n2: u32,
    n3: u32,
}
