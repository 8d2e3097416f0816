//! The forward pass on a CUDA device: cuBLAS `GemmEx` (f32 in, f32 compute, TF32 off) for the
//! matrix products, small NVRTC kernels for everything element-wise. Same algorithm, order of
//! operations and weight streaming (one layer on the device at a time) as [`super::cpu`].
//!
//! The CUDA libraries are loaded at run time (`dynamic-loading`), so this builds without CUDA
//! installed; each library's presence is checked before cudarc touches it, because cudarc
//! panics when a library it needs is absent.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::error::{Error, Result};
use crate::model::{Activation, Model};

/// Threads per block for every kernel; the reductions below assume exactly this.
const THREADS: u32 = 256;
/// Dynamic shared memory available without opting in (attention keeps one score row there).
const SHARED_LIMIT: usize = 48 * 1024;

const KERNELS: &str = r#"
#define THREADS 256

__device__ double block_sum(double v, double* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    double r = red[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    float r = red[0];
    __syncthreads();
    return r;
}

// x[row] = wte[ids[row]] + wpe[row % seq]; one block per token.
extern "C" __global__ void embed(float* x, const float* wte, const float* wpe,
                                 const unsigned int* ids, int seq, int h) {
    size_t row = blockIdx.x;
    size_t id = ids[row];
    size_t t = row % seq;
    for (int j = threadIdx.x; j < h; j += THREADS)
        x[row * h + j] = wte[id * h + j] + wpe[t * h + j];
}

// LayerNorm of one row per block: two-pass mean and biased variance in double.
extern "C" __global__ void layer_norm(float* out, const float* x, const float* w, const float* b,
                                      int h, double eps) {
    __shared__ double red[THREADS];
    const float* r = x + (size_t)blockIdx.x * h;
    float* o = out + (size_t)blockIdx.x * h;
    double s = 0.0;
    for (int j = threadIdx.x; j < h; j += THREADS) s += r[j];
    double mean = block_sum(s, red) / h;
    double v = 0.0;
    for (int j = threadIdx.x; j < h; j += THREADS) { double d = r[j] - mean; v += d * d; }
    double inv = 1.0 / sqrt(block_sum(v, red) / h + eps);
    for (int j = threadIdx.x; j < h; j += THREADS)
        o[j] = (float)((r[j] - mean) * inv) * w[j] + b[j];
}

// y[i, j] = b[j] for a [rows, cols] matrix: the starting value of a Conv1D.
extern "C" __global__ void fill_bias(float* y, const float* b, unsigned long long n, int cols) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)THREADS + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * THREADS)
        y[i] = b[i % cols];
}

extern "C" __global__ void add(float* x, const float* y, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)THREADS + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * THREADS)
        x[i] += y[i];
}

// kind: 0 gelu tanh, 1 gelu erf (in double, as on the CPU), 2 relu, 3 silu, 4 quick_gelu.
extern "C" __global__ void activate(float* x, unsigned long long n, int kind) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)THREADS + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * THREADS) {
        float v = x[i];
        switch (kind) {
        case 0: v = 0.5f * v * (1.0f + tanhf(0.7978846f * (v + 0.044715f * v * v * v))); break;
        case 1: v = (float)(0.5 * (double)v * (1.0 + erf((double)v * 0.7071067811865476))); break;
        case 2: v = fmaxf(v, 0.0f); break;
        case 3: v = v / (1.0f + expf(-v)); break;
        default: v = v / (1.0f + expf(-1.702f * v)); break;
        }
        x[i] = v;
    }
}

// Causal attention for query position i = blockIdx.x of head blockIdx.y of row blockIdx.z.
// qkv rows are [q | k | v] (each n_head * hd wide); ctx rows are n_head * hd wide.
extern "C" __global__ void attention(float* ctx, const float* qkv, int seq, int h, int hd,
                                     float divisor, float layer_div, int use_layer_div) {
    extern __shared__ float p[];  // seq floats: the scores of this query, then probabilities
    __shared__ double red[THREADS];
    __shared__ float redf[THREADS];
    int i = blockIdx.x, head = blockIdx.y, b = blockIdx.z;
    size_t w3 = 3 * (size_t)h;
    const float* q = qkv + ((size_t)b * seq + i) * w3 + (size_t)head * hd;
    float m = __int_as_float(0xff800000);  // -inf, without relying on math.h in NVRTC
    for (int j = threadIdx.x; j <= i; j += THREADS) {
        const float* k = qkv + ((size_t)b * seq + j) * w3 + h + (size_t)head * hd;
        float s = 0.0f;
        for (int d = 0; d < hd; ++d) s += q[d] * k[d];
        s = s / divisor;
        if (use_layer_div) s = s / layer_div;
        p[j] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, redf);
    double local = 0.0;
    for (int j = threadIdx.x; j <= i; j += THREADS) {
        float e = expf(p[j] - m);
        p[j] = e;
        local += e;
    }
    float inv = (float)(1.0 / block_sum(local, red));  // block_sum synchronizes: p is complete
    for (int d = threadIdx.x; d < hd; d += THREADS) {
        float acc = 0.0f;
        for (int j = 0; j <= i; ++j)
            acc += (p[j] * inv) * qkv[((size_t)b * seq + j) * w3 + 2 * (size_t)h + (size_t)head * hd + d];
        ctx[((size_t)b * seq + i) * h + (size_t)head * hd + d] = acc;
    }
}
"#;

fn dev_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device(format!("CUDA {what}: {e}"))
}

/// Fails with a clear message unless libcuda, cuBLAS and NVRTC can all be loaded.
fn check_libraries() -> Result<()> {
    // SAFETY: each call only tries to dlopen the library by its usual names and drops it.
    let present = unsafe {
        [
            (
                "the CUDA driver (libcuda)",
                cudarc::driver::sys::is_culib_present(),
            ),
            (
                "cuBLAS (libcublas)",
                cudarc::cublas::sys::is_culib_present(),
            ),
            ("NVRTC (libnvrtc)", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Device(format!(
            "--device cuda needs {} but it could not be loaded; install the NVIDIA driver and \
             the CUDA 13 runtime libraries, or use --device cpu",
            missing.join(", ")
        )))
    }
}

/// Precise division and square roots, no flush-to-zero, no fused multiply-add contraction: the
/// kernels should round like the CPU loops.
fn compile_options() -> CompileOptions {
    CompileOptions {
        ftz: Some(false),
        prec_sqrt: Some(true),
        prec_div: Some(true),
        fmad: Some(false),
        ..Default::default()
    }
}

/// A size as the `int` the kernels and cuBLAS take.
fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Overflow(format!("{what} ({v}) for CUDA's 32-bit sizes")))
}

struct Gpu {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    embed: CudaFunction,
    layer_norm: CudaFunction,
    fill_bias: CudaFunction,
    add: CudaFunction,
    activate: CudaFunction,
    attention: CudaFunction,
}

/// Grid for a grid-stride loop over `n` elements.
fn flat(n: usize) -> LaunchConfig {
    let count = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    blocks((count, 1, 1), 0)
}

/// One block of [`THREADS`] per grid cell, with `shared` bytes of dynamic shared memory.
fn blocks(grid_dim: (u32, u32, u32), shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// Launches kernel `$kernel` of `$gpu` on `$cfg` with the arguments in order, naming the kernel
/// in any error. Every use carries a `SAFETY:` comment saying why its buffers hold what the
/// launch geometry makes the kernel touch.
macro_rules! launch {
    ($gpu:expr, $kernel:ident, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        let mut builder = $gpu.stream.launch_builder(&$gpu.$kernel);
        $( builder.arg($arg); )+
        // SAFETY: the arguments match the kernel's signature in KERNELS; the caller's comment
        // states why every index the kernel computes is in bounds.
        unsafe { builder.launch($cfg) }
            .map(|_| ())
            .map_err(|e| dev_err(stringify!($kernel), e))
    }};
}

impl Gpu {
    fn new(ordinal: usize) -> Result<Gpu> {
        check_libraries()?;
        let count = CudaContext::device_count().map_err(|e| dev_err("device count", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Device(format!(
                "cuda:{ordinal} requested but {count} CUDA device(s) are visible"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("context", e))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| dev_err("cuBLAS handle", e))?;
        // Verification wants plain f32 products: no TF32 tensor-op math.
        // SAFETY: the handle is live for as long as `blas`.
        let status = unsafe {
            blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH)
        };
        if status != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(Error::Device(format!(
                "cuBLAS cublasSetMathMode: {status:?}"
            )));
        }
        let ptx = compile_ptx_with_opts(KERNELS, compile_options())
            .map_err(|e| dev_err("NVRTC compile", e))?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| dev_err("module load", e))?;
        let f = |name: &str| module.load_function(name).map_err(|e| dev_err(name, e));
        Ok(Gpu {
            embed: f("embed")?,
            layer_norm: f("layer_norm")?,
            fill_bias: f("fill_bias")?,
            add: f("add")?,
            activate: f("activate")?,
            attention: f("attention")?,
            stream,
            blas,
        })
    }

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream
            .clone_htod(data)
            .map_err(|e| dev_err("copy to device", e))
    }

    fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        self.stream
            .alloc_zeros::<f32>(n)
            .map_err(|e| dev_err("allocation", e))
    }

    /// Column-major `c[m x n] = beta * c + op(a)[m x k] * b[k x n]` with f32 compute.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        trans_a: bool,
        (m, n, k): (i32, i32, i32),
        a: &CudaSlice<f32>,
        lda: i32,
        b: &CudaSlice<f32>,
        ldb: i32,
        c: &mut CudaSlice<f32>,
        ldc: i32,
        beta: f32,
    ) -> Result<()> {
        let alpha = 1.0f32;
        let (pa, _ga) = a.device_ptr(&self.stream);
        let (pb, _gb) = b.device_ptr(&self.stream);
        let (pc, _gc) = c.device_ptr_mut(&self.stream);
        let op_a = if trans_a {
            blas_sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas_sys::cublasOperation_t::CUBLAS_OP_N
        };
        // SAFETY: the callers size a, b and c for these dimensions and leading dimensions;
        // alpha and beta live until the call returns (host pointer mode).
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                op_a,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                &alpha as *const f32 as *const c_void,
                pa as *const c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                lda,
                pb as *const c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                ldb,
                &beta as *const f32 as *const c_void,
                pc as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                ldc,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| dev_err("cuBLAS GemmEx", e))
    }

    /// Conv1D: row-major `y[rows x out] = x[rows x inp] @ w[inp x out] + b`. In column-major
    /// terms y^T = w^T x^T, and row-major w is already column-major w^T with ld = out.
    fn conv1d(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        inp: usize,
        w: &[f32],
        b: &[f32],
        out: usize,
    ) -> Result<CudaSlice<f32>> {
        let (w, b) = (self.upload(w)?, self.upload(b)?);
        let n = rows * out;
        let mut y = self.zeros(n)?;
        let (n64, cols) = (n as u64, int(out, "Conv1D width")?);
        // SAFETY: y holds rows * out floats and b holds out; the kernel indexes i < n, i % cols.
        launch!(self, fill_bias, flat(n); &mut y, &b, &n64, &cols)?;
        let (o, r, i) = (cols, int(rows, "tokens")?, int(inp, "Conv1D input")?);
        self.gemm(false, (o, r, i), &w, o, x, i, &mut y, o, 1.0)?;
        Ok(y)
    }

    fn layer_norm(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        h: usize,
        w: &[f32],
        b: &[f32],
        eps: f64,
    ) -> Result<CudaSlice<f32>> {
        let (w, b) = (self.upload(w)?, self.upload(b)?);
        let mut out = self.zeros(rows * h)?;
        let (hi, rows) = (int(h, "n_embd")?, int(rows, "tokens")?.unsigned_abs());
        // SAFETY: one block per row of h floats in x and out; w and b hold h floats.
        launch!(self, layer_norm, blocks((rows, 1, 1), 0); &mut out, x, &w, &b, &hi, &eps)?;
        Ok(out)
    }

    fn add(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) -> Result<()> {
        let n64 = n as u64;
        // SAFETY: x and y both hold n floats.
        launch!(self, add, flat(n); x, y, &n64)?;
        Ok(())
    }
}

/// The sizes of one run, checked against CUDA's 32-bit sizes and grid limits.
struct Dims {
    /// Tokens (batch x seq).
    n: usize,
    batch: usize,
    seq: usize,
    h: usize,
    inner: usize,
    vocab: usize,
}

impl Dims {
    fn new(model: &Model, batch: usize, seq: usize) -> Result<Dims> {
        let c = &model.config;
        let (h, inner, nh, v) = (c.n_embd, c.n_inner, c.n_head, c.vocab_size);
        let n = batch * seq;
        // Launch geometry limits (grid.x of 2^31-1 for rows, 65535 for grid.y/z).
        int(n, "tokens")?;
        int(n * v.max(3 * h).max(inner), "activation size")?;
        if nh > 65_535 || batch > 65_535 {
            return Err(Error::Device(format!(
                "{nh} heads x batch {batch} exceed CUDA's grid limits"
            )));
        }
        // The attention kernel keeps one query's scores (seq floats) in shared memory.
        if seq * 4 > SHARED_LIMIT {
            return Err(Error::Device(format!(
                "seq {seq} needs {} bytes of shared memory per attention block; the limit is {SHARED_LIMIT}",
                seq * 4
            )));
        }
        Ok(Dims {
            n,
            batch,
            seq,
            h,
            inner,
            vocab: v,
        })
    }
}

/// Computes logits `[batch, seq, vocab]` on CUDA device `ordinal`; see [`super::run`] for the
/// preconditions.
pub fn forward(
    model: &Model,
    ids: &[u32],
    batch: usize,
    seq: usize,
    ordinal: usize,
) -> Result<Vec<f32>> {
    let gpu = Gpu::new(ordinal)?;
    let d = Dims::new(model, batch, seq)?;
    let c = &model.config;
    let mut x = embed(&gpu, model, ids, &d)?;
    for l in 0..c.n_layer {
        attention_block(&gpu, model, l, &mut x, &d)?;
        mlp_block(&gpu, model, l, &mut x, &d)?;
        // Finish this layer before its weights' host buffers are dropped and the next widened.
        gpu.stream
            .synchronize()
            .map_err(|e| dev_err("synchronize", e))?;
    }
    lm_head(&gpu, model, &x, &d)
}

/// `x[t] = wte[ids[t]] + wpe[t % seq]` on the device.
fn embed(gpu: &Gpu, model: &Model, ids: &[u32], d: &Dims) -> Result<CudaSlice<f32>> {
    let (hi, seqi) = (int(d.h, "n_embd")?, int(d.seq, "seq")?);
    let mut x = gpu.zeros(d.n * d.h)?;
    let wte = gpu.upload(&model.tensor_f32("wte.weight")?)?;
    let wpe = gpu.upload(&model.tensor_f32("wpe.weight")?)?;
    let ids_d = gpu
        .stream
        .clone_htod(ids)
        .map_err(|e| dev_err("copy ids", e))?;
    let rows = int(d.n, "tokens")?.unsigned_abs();
    // SAFETY: ids < vocab and position < n_positions were checked; x holds n * h floats.
    launch!(gpu, embed, blocks((rows, 1, 1), 0); &mut x, &wte, &wpe, &ids_d, &seqi, &hi)?;
    Ok(x)
}

/// `x += c_proj(attention(c_attn(ln_1(x))))` for layer `l`.
fn attention_block(
    gpu: &Gpu,
    model: &Model,
    l: usize,
    x: &mut CudaSlice<f32>,
    d: &Dims,
) -> Result<()> {
    let c = &model.config;
    let (n, h, hd) = (d.n, d.h, c.head_dim());
    let w = |name: &str| model.tensor_f32(&format!("h.{l}.{name}"));
    let eps = c.layer_norm_epsilon;
    let a = gpu.layer_norm(x, n, h, &w("ln_1.weight")?, &w("ln_1.bias")?, eps)?;
    let (qkv_w, qkv_b) = (w("attn.c_attn.weight")?, w("attn.c_attn.bias")?);
    let qkv = gpu.conv1d(&a, n, h, &qkv_w, &qkv_b, 3 * h)?;
    drop(a);
    let mut ctx = gpu.zeros(n * h)?;
    // transformers divides by a tensor holding sqrt(head_dim) (and the layer number).
    let divisor = if c.scale_attn_weights {
        (hd as f64).sqrt() as f32
    } else {
        1.0
    };
    let (layer_div, use_layer_div) = ((l + 1) as f32, i32::from(c.scale_attn_by_inverse_layer_idx));
    let (seqi, hi, hdi) = (int(d.seq, "seq")?, int(h, "n_embd")?, int(hd, "head_dim")?);
    let grid = (seqi.unsigned_abs(), c.n_head as u32, d.batch as u32);
    // SAFETY: grid covers (position, head, row) within qkv's [n, 3h] and ctx's [n, h] (Dims
    // checked heads and batch against the grid limits); shared memory holds seq floats.
    launch!(gpu, attention, blocks(grid, seqi.unsigned_abs() * 4);
        &mut ctx, &qkv, &seqi, &hi, &hdi, &divisor, &layer_div, &use_layer_div)?;
    drop(qkv);
    let (proj_w, proj_b) = (w("attn.c_proj.weight")?, w("attn.c_proj.bias")?);
    let o = gpu.conv1d(&ctx, n, h, &proj_w, &proj_b, h)?;
    gpu.add(x, &o, n * h)
}

/// `x += mlp.c_proj(act(c_fc(ln_2(x))))` for layer `l`.
fn mlp_block(gpu: &Gpu, model: &Model, l: usize, x: &mut CudaSlice<f32>, d: &Dims) -> Result<()> {
    let c = &model.config;
    let (n, h, inner) = (d.n, d.h, d.inner);
    let w = |name: &str| model.tensor_f32(&format!("h.{l}.{name}"));
    let eps = c.layer_norm_epsilon;
    let m = gpu.layer_norm(x, n, h, &w("ln_2.weight")?, &w("ln_2.bias")?, eps)?;
    let (fc_w, fc_b) = (w("mlp.c_fc.weight")?, w("mlp.c_fc.bias")?);
    let mut f = gpu.conv1d(&m, n, h, &fc_w, &fc_b, inner)?;
    let act_kind: i32 = match c.activation {
        Activation::GeluTanh => 0,
        Activation::GeluErf => 1,
        Activation::Relu => 2,
        Activation::Silu => 3,
        Activation::QuickGelu => 4,
    };
    let nf = (n * inner) as u64;
    // SAFETY: f holds n * inner floats.
    launch!(gpu, activate, flat(n * inner); &mut f, &nf, &act_kind)?;
    let (out_w, out_b) = (w("mlp.c_proj.weight")?, w("mlp.c_proj.bias")?);
    let o = gpu.conv1d(&f, n, inner, &out_w, &out_b, h)?;
    gpu.add(x, &o, n * h)
}

/// Final LayerNorm and `logits = ln_f(x) @ head^T`, copied back to the host.
fn lm_head(gpu: &Gpu, model: &Model, x: &CudaSlice<f32>, d: &Dims) -> Result<Vec<f32>> {
    let (n, h, v) = (d.n, d.h, d.vocab);
    let (ln_w, ln_b) = (
        model.tensor_f32("ln_f.weight")?,
        model.tensor_f32("ln_f.bias")?,
    );
    let xf = gpu.layer_norm(x, n, h, &ln_w, &ln_b, model.config.layer_norm_epsilon)?;
    let head = if model.has_lm_head() {
        model.tensor_f32("lm_head.weight")?
    } else {
        model.tensor_f32("wte.weight")?
    };
    let head = gpu.upload(&head)?;
    let mut logits = gpu.zeros(n * v)?;
    // Row-major logits [n, v] = column-major [v x n] = head (row-major [v, h], i.e. column-major
    // [h x v], transposed) times xf (column-major [h x n]).
    let (vi, ni, hi) = (int(v, "vocab_size")?, int(n, "tokens")?, int(h, "n_embd")?);
    gpu.gemm(true, (vi, ni, hi), &head, hi, &xf, hi, &mut logits, vi, 0.0)?;
    gpu.stream
        .clone_dtoh(&logits)
        .map_err(|e| dev_err("copy logits back", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels are only compiled at run time, so a syntax error would otherwise surface on
    /// the first GPU run. NVRTC needs no GPU: where its library is installed, compile them here.
    #[test]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: only tries to load the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("libnvrtc not found: skipping (set LD_LIBRARY_PATH to a CUDA 13 lib folder)");
            return;
        }
        let ptx =
            compile_ptx_with_opts(KERNELS, compile_options()).unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        for name in [
            "embed",
            "layer_norm",
            "fill_bias",
            "add",
            "activate",
            "attention",
        ] {
            assert!(
                text.contains(&format!(".entry {name}(")),
                "no kernel {name} in the PTX"
            );
        }
    }
}
