//! The forward pass on the CPU: `gemm` for every matrix product (16-bit weights widened a
//! panel at a time, see [`super::panel`]), plain loops for the rest.

use gemm::Parallelism;

use super::attention::{attention, Attention, Kv};
use super::cache::KvCache;
use super::half::{self, HalfMatrix};
use super::matmul::{matmul, View};
use super::panel::{self, Epilogue, F32Matrix, Layout};
use super::vmath::layer_norm;
use crate::error::{Error, Result};
use crate::model::{Config, Model};

/// A weight matrix: widened to f32, or 16-bit read in place (passes of a few tokens).
#[derive(Clone, Copy)]
enum Mat<'a> {
    F32(&'a [f32]),
    Half(HalfMatrix<'a>),
}

/// How the products of a pass run: `gemm`'s parallelism, the pool's thread count, and whether
/// 16-bit matrices go to the decode-step kernels (a pass of a few tokens) or the panel products.
#[derive(Clone, Copy)]
struct Run {
    par: Parallelism,
    threads: usize,
    direct: bool,
}

/// Conv1D: `x[rows x inp] @ w[inp x out]` plus the bias in `ep`, into `y` (`[rows, out]`).
fn conv1d(x: &[f32], inp: usize, w: Mat<'_>, y: &mut [f32], ep: Epilogue<'_>, run: Run) {
    let bias = match ep {
        Epilogue::Bias(b) | Epilogue::BiasAct(b, _) | Epilogue::AddBias(b) => b,
        Epilogue::Plain => &[],
    };
    let out = y.len() / (x.len() / inp.max(1)).max(1);
    let full = match w {
        Mat::Half(m) if !run.direct => {
            return panel::product(x, m, Layout::InOut, y, ep, run.threads);
        }
        Mat::F32(w) if !run.direct => match F32Matrix::new(w, inp, out) {
            Some(m) => return panel::product(x, m, Layout::InOut, y, ep, run.threads),
            None => addmm(x, inp, w, bias, run.par),
        },
        Mat::Half(m) => half::conv1d(x, m, bias, run.threads),
        Mat::F32(w) => addmm(x, inp, w, bias, run.par),
    };
    match ep {
        Epilogue::AddBias(_) => add_into(y, &full),
        Epilogue::BiasAct(_, act) => {
            y.copy_from_slice(&full);
            panel::activate_all(y, act);
        }
        Epilogue::Bias(_) | Epilogue::Plain => y.copy_from_slice(&full),
    }
}

/// `bias + x @ w` with one `gemm` call, starting from the bias and accumulating as
/// torch.addmm(bias, x, w) does (decode steps with f32 weights).
fn addmm(x: &[f32], inp: usize, w: &[f32], bias: &[f32], par: Parallelism) -> Vec<f32> {
    let (rows, out) = (x.len() / inp, bias.len());
    let mut y: Vec<f32> = bias.iter().copied().cycle().take(rows * out).collect();
    let (lhs, rhs) = (View::rows(x, inp), View::rows(w, out));
    matmul(&mut y, 0, out, lhs, rhs, (rows, out, inp), true, par);
    y
}

/// The tensors of one block, in the order [`Layer`]'s fields are filled.
const LAYER_TENSORS: [&str; 12] = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
];

/// One block's weights: vectors widened to f32, 16-bit matrices read in place, f32 borrowed.
struct Layer<'a> {
    ln1_w: &'a [f32],
    ln1_b: &'a [f32],
    attn_w: Mat<'a>,
    attn_b: &'a [f32],
    proj_w: Mat<'a>,
    proj_b: &'a [f32],
    ln2_w: &'a [f32],
    ln2_b: &'a [f32],
    fc_w: Mat<'a>,
    fc_b: &'a [f32],
    out_w: Mat<'a>,
    out_b: &'a [f32],
}

impl<'a> Layer<'a> {
    /// Reads layer `l`: 16-bit matrices in place (the products widen them a panel at a time),
    /// vectors and any other matrix widened into `bufs` (one buffer per tensor, reused by every
    /// layer so that no fresh pages are touched after the first).
    fn load(
        model: &'a Model,
        l: usize,
        bufs: &'a mut [Vec<f32>; 12],
        threads: usize,
    ) -> Result<Self> {
        let (h, inner) = (model.config.n_embd, model.config.n_inner);
        let mut slots = bufs.iter_mut().zip(LAYER_TENSORS);
        // Struct fields are evaluated in source order, which is LAYER_TENSORS' order.
        let mut next = |shape: Option<(usize, usize)>| -> Result<Mat<'a>> {
            let (buf, name) = slots
                .next()
                .ok_or_else(|| Error::Internal("more layer tensors read than listed".into()))?;
            let name = format!("h.{l}.{name}");
            if let Some((r, c)) = shape {
                if let Some(m) = HalfMatrix::new(model.tensor_raw(&name)?, r, c) {
                    return Ok(Mat::Half(m));
                }
            }
            Ok(Mat::F32(model.tensor_f32_in(&name, buf, threads)?))
        };
        fn vector(m: Mat<'_>) -> Result<&[f32]> {
            match m {
                Mat::F32(v) => Ok(v),
                Mat::Half(_) => Err(Error::Internal("a vector read as a matrix".into())),
            }
        }
        Ok(Layer {
            ln1_w: vector(next(None)?)?,
            ln1_b: vector(next(None)?)?,
            attn_w: next(Some((h, 3 * h)))?,
            attn_b: vector(next(None)?)?,
            proj_w: next(Some((h, h)))?,
            proj_b: vector(next(None)?)?,
            ln2_w: vector(next(None)?)?,
            ln2_b: vector(next(None)?)?,
            fc_w: next(Some((h, inner)))?,
            fc_b: vector(next(None)?)?,
            out_w: next(Some((inner, h)))?,
            out_b: vector(next(None)?)?,
        })
    }
}

/// Which positions a pass computes logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `[rows, new, vocab]` (verification).
    All,
    /// The last position of each row: `[rows, vocab]` (generation; the head is the largest
    /// product, so the others are skipped).
    Last,
}

/// The shape of one pass: `rows` sequences of `new` tokens each, at positions
/// `past..past + new` (`past` is 0 without a cache).
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// Batch rows (beams).
    pub rows: usize,
    /// Tokens per row in this pass.
    pub new: usize,
    /// Positions already in the cache.
    pub past: usize,
    /// Multiply 16-bit weight matrices with the matrix-vector kernels (a pass of a few tokens:
    /// generation's decode steps) rather than the panel products. Verification never sets it.
    pub direct: bool,
}

/// Computes the logits `which` asks for, appending keys and values to `cache` when there is
/// one; see [`super::run`] and [`super::run_cached`] for the preconditions.
pub fn forward(
    model: &Model,
    ids: &[u32],
    pass: Pass,
    mut cache: Option<&mut KvCache>,
    which: Logits,
    threads: usize,
) -> Result<Vec<f32>> {
    let c = &model.config;
    let run = Run {
        par: if threads <= 1 {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        },
        threads,
        direct: pass.direct,
    };
    let mut x = embed(model, ids, pass)?;
    let mut bufs: [Vec<f32>; 12] = Default::default();
    for l in 0..c.n_layer {
        let w = Layer::load(model, l, &mut bufs, threads)?;
        let attn = Attention::new(c, l, pass.new, pass.past);
        let layer_cache = cache.as_deref_mut().map(|kv| (l, kv));
        attention_block(&mut x, &w, &attn, layer_cache, c.layer_norm_epsilon, run)?;
        mlp_block(&mut x, &w, c, run);
        if !pass.direct {
            // Decode steps reread every layer at once; a long pass is done with this one.
            for name in LAYER_TENSORS {
                model.release(&format!("h.{l}.{name}"))?;
            }
        }
    }
    drop(bufs);
    if let Some(kv) = cache {
        kv.len += pass.new;
    }
    let (ln_w, ln_b) = (
        model.tensor_f32("ln_f.weight")?,
        model.tensor_f32("ln_f.bias")?,
    );
    if which == Logits::Last {
        x = last_rows(&x, pass, c.n_embd);
    }
    layer_norm(&mut x, c.n_embd, &ln_w, &ln_b, c.layer_norm_epsilon);
    let n = x.len() / c.n_embd;
    let name = if model.has_lm_head() {
        "lm_head.weight"
    } else {
        "wte.weight"
    };
    if let Some(m) = HalfMatrix::new(model.tensor_raw(name)?, c.vocab_size, c.n_embd) {
        if pass.direct {
            return Ok(half::head(&x, m, threads));
        }
        // The head is the largest matrix: widened a panel at a time, never as a whole.
        let mut logits = vec![0f32; n * c.vocab_size];
        panel::product(&x, m, Layout::OutIn, &mut logits, Epilogue::Plain, threads);
        model.release(name)?;
        return Ok(logits);
    }
    let mut head_buf = Vec::new();
    let head = model.tensor_f32_in(name, &mut head_buf, threads)?;
    match F32Matrix::new(head, c.vocab_size, c.n_embd) {
        Some(m) if !pass.direct => {
            let mut logits = vec![0f32; n * c.vocab_size];
            panel::product(&x, m, Layout::OutIn, &mut logits, Epilogue::Plain, threads);
            Ok(logits)
        }
        _ => Ok(lm_head(&x, head, n, c.n_embd, c.vocab_size, run.par)),
    }
}

/// The hidden state of each row's last token (LayerNorm is per token, so it can come after).
fn last_rows(x: &[f32], pass: Pass, h: usize) -> Vec<f32> {
    x.chunks_exact(pass.new * h)
        .flat_map(|row| &row[(pass.new - 1) * h..])
        .copied()
        .collect()
}

/// `x[t] = wte[ids[t]] + wpe[past + t % new]`, reading only the rows needed.
fn embed(model: &Model, ids: &[u32], pass: Pass) -> Result<Vec<f32>> {
    let h = model.config.n_embd;
    let mut x = vec![0f32; ids.len() * h];
    let mut p = vec![0f32; h];
    for (i, (row, &id)) in x.chunks_exact_mut(h).zip(ids).enumerate() {
        model.row_f32("wte.weight", id as usize, row)?;
        model.row_f32("wpe.weight", pass.past + i % pass.new, &mut p)?;
        for (v, &b) in row.iter_mut().zip(&p) {
            *v += b;
        }
    }
    Ok(x)
}

/// `x += c_proj(attention(c_attn(ln_1(x))))`, the keys and values of this pass appended to
/// layer `l` of the cache first when there is one.
fn attention_block(
    x: &mut [f32],
    w: &Layer<'_>,
    attn: &Attention,
    cache: Option<(usize, &mut KvCache)>,
    eps: f64,
    run: Run,
) -> Result<()> {
    let h = attn.h;
    let n = x.len() / h;
    let mut a = x.to_vec();
    layer_norm(&mut a, h, w.ln1_w, w.ln1_b, eps);
    let mut qkv = vec![0f32; n * 3 * h];
    conv1d(&a, h, w.attn_w, &mut qkv, Epilogue::Bias(w.attn_b), run);
    drop(a);
    let threads = run.threads;
    let ctx = match cache {
        None => attention(&qkv, Kv::in_qkv(&qkv, attn), attn, threads),
        Some((l, kv)) => {
            kv.store(l, &qkv, attn.seq)?;
            let (k, v) = (&kv.k[l], &kv.v[l]);
            attention(&qkv, Kv::in_cache(k, v, kv.capacity, h), attn, threads)
        }
    };
    drop(qkv);
    conv1d(&ctx, h, w.proj_w, x, Epilogue::AddBias(w.proj_b), run);
    Ok(())
}

/// `x += mlp.c_proj(act(c_fc(ln_2(x))))`.
fn mlp_block(x: &mut [f32], w: &Layer<'_>, c: &Config, run: Run) {
    let (h, inner) = (c.n_embd, c.n_inner);
    let n = x.len() / h;
    let mut m = x.to_vec();
    layer_norm(&mut m, h, w.ln2_w, w.ln2_b, c.layer_norm_epsilon);
    let mut f = vec![0f32; n * inner];
    let fc = Epilogue::BiasAct(w.fc_b, c.activation);
    conv1d(&m, h, w.fc_w, &mut f, fc, run);
    drop(m);
    conv1d(&f, inner, w.out_w, x, Epilogue::AddBias(w.out_b), run);
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (xv, yv) in x.iter_mut().zip(y) {
        *xv += yv;
    }
}

/// `logits = x @ head^T`, head `[vocab, h]` row-major, read transposed through its strides.
fn lm_head(x: &[f32], head: &[f32], n: usize, h: usize, v: usize, par: Parallelism) -> Vec<f32> {
    let mut logits = vec![0f32; n * v];
    let head_t = View {
        data: head,
        offset: 0,
        rs: 1,
        cs: h,
    };
    matmul(
        &mut logits,
        0,
        v,
        View::rows(x, h),
        head_t,
        (n, v, h),
        false,
        par,
    );
    logits
}
