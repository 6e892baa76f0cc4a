//! Opt-in bf16 products for a tower's weight matrices (`model.image_precision = "bf16"`).
//!
//! Zen 4 and recent Intel parts have AVX512-BF16: `vdpbf16ps` multiplies 32 pairs of bf16
//! numbers and adds them into 16 f32 accumulators, twice the multiply-adds per cycle of an f32
//! FMA (bench/RESULTS.md, row 28). tract 0.23.9 has no kernel for it on these CPUs, so
//! [`rewrite`] replaces each product of an activation by a constant weight matrix (an `EinSum`
//! of the decluttered graph) with a [`Bf16MatMul`] of our own: the weights are rounded to bf16
//! once, at load, and the activations at every run; the sums stay f32. Everything else (the
//! attention's products of two activations, norms, softmax) stays f32.
//!
//! This is lossy: each product's inputs lose 16 bits of mantissa. On the random-weight export
//! the image embeddings stay at cosine >= 0.99995 to f32 (the parity tolerance is 0.9999), but
//! real weights, with their outliers, may round worse and could not be checked here; hence off
//! by default.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

/// Whether this CPU has the instructions the bf16 products need.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output features per weight panel: two 16-lane accumulators.
const MR: usize = 32;
/// Activation rows per tile.
const NR: usize = 5;

/// Weights `[K, N]` rounded to bf16, in panels of `MR` output features: for each pair `q` of `k`,
/// one u32 per feature holding `w[2q][n]` (low half) and `w[2q + 1][n]` (high half), which is
/// the operand layout of `vdpbf16ps`.
#[derive(Debug)]
struct PackedWeights {
    k: usize,
    n: usize,
    /// `ceil(k / 2)`.
    kp: usize,
    data: Vec<u32>,
}

impl PackedWeights {
    /// `w(k, n)` reads the f32 weight of input `k`, output `n`.
    fn pack(k: usize, n: usize, w: impl Fn(usize, usize) -> f32) -> PackedWeights {
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(MR);
        let mut data = vec![0u32; panels * kp * MR];
        let get = |k_ix: usize, n_ix: usize| {
            if k_ix < k && n_ix < n {
                u32::from(bf16_bits(w(k_ix, n_ix)))
            } else {
                0
            }
        };
        for p in 0..panels {
            for q in 0..kp {
                for r in 0..MR {
                    let n_ix = p * MR + r;
                    data[(p * kp + q) * MR + r] = get(2 * q, n_ix) | (get(2 * q + 1, n_ix) << 16);
                }
            }
        }
        PackedWeights { k, n, kp, data }
    }

    fn panel(&self, p: usize) -> &[u32] {
        &self.data[p * self.kp * MR..(p + 1) * self.kp * MR]
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(MR)
    }
}

/// f32 to bf16 with rounding to nearest, ties to even (as `vcvtne2ps2bf16`; no NaN inputs here).
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// Where an output axis comes from: an axis of the canonical result `[x's kept axes..., w's
/// kept axes...]`, or a unit axis the einsum adds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OutAxis {
    Canonical(usize),
    Unit,
}

/// `y = x . w` for a constant `w`, with bf16 products: `x`'s trailing `contracted` axes (in
/// `w`'s order) are summed against `w`, and the result's axes are laid out as the replaced
/// einsum's output.
#[derive(Debug, Clone)]
pub struct Bf16MatMul {
    weights: Arc<PackedWeights>,
    /// Shapes of `w`'s kept axes, in `w`'s order (their product is `n`).
    w_kept: TVec<usize>,
    /// Number of `x`'s trailing axes that are summed.
    contracted: usize,
    /// The output's axes.
    out_axes: TVec<OutAxis>,
}

impl PartialEq for Bf16MatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
            && self.w_kept == other.w_kept
            && self.contracted == other.contracted
            && self.out_axes == other.out_axes
    }
}
impl Eq for Bf16MatMul {}

impl Hash for Bf16MatMul {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.weights) as usize).hash(state);
        self.w_kept.hash(state);
        self.contracted.hash(state);
        self.out_axes.hash(state);
    }
}

impl Op for Bf16MatMul {
    fn name(&self) -> StaticName {
        "Bf16MatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("k={} n={}", self.weights.k, self.weights.n)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Bf16MatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let x = x.to_plain_array_view::<f32>()?;
        let rank = x.ndim();
        ensure!(rank >= self.contracted, "input of rank {rank}");
        let kept = &x.shape()[..rank - self.contracted];
        let k: usize = x.shape()[rank - self.contracted..].iter().product();
        ensure!(
            k == self.weights.k,
            "input sums {k} values, weights {}",
            self.weights.k
        );
        let rows: usize = kept.iter().product();
        let x = x.as_standard_layout();
        let x = x.as_slice().context("contiguous input")?;
        let y = matmul(x, rows, &self.weights);
        let canonical: TVec<usize> = kept.iter().chain(&self.w_kept).copied().collect();
        let mut y = Tensor::from_shape(&canonical, &y)?;
        let order: Vec<usize> = self
            .out_axes
            .iter()
            .filter_map(|a| match a {
                OutAxis::Canonical(i) => Some(*i),
                OutAxis::Unit => None,
            })
            .collect();
        if order.iter().enumerate().any(|(i, &o)| i != o) {
            y = y.permute_axes(&order)?;
        }
        for (pos, a) in self.out_axes.iter().enumerate() {
            if *a == OutAxis::Unit {
                y.insert_axis(pos)?;
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Bf16MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        let rank = shape.rank();
        let canonical: TVec<TDim> = shape
            .iter()
            .take(rank - self.contracted)
            .cloned()
            .chain(self.w_kept.iter().map(|&d| d.to_dim()))
            .collect();
        let out: TVec<TDim> = self
            .out_axes
            .iter()
            .map(|a| match a {
                OutAxis::Canonical(i) => canonical[*i].clone(),
                OutAxis::Unit => 1.to_dim(),
            })
            .collect();
        Ok(tvec!(f32::fact(out)))
    }

    as_op!();
}

/// Bytes of bf16 weights the [`Bf16MatMul`] ops of `model` hold, each copy counted once (the
/// plans built from `model` share them).
pub fn weight_bytes(model: &TypedModel) -> usize {
    let mut seen = std::collections::HashSet::new();
    model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<Bf16MatMul>())
        .filter(|op| seen.insert(Arc::as_ptr(&op.weights)))
        .map(|op| op.weights.data.len() * std::mem::size_of::<u32>())
        .sum()
}

/// Replaces every f32 product of an activation by a constant matrix that fits the
/// [`Bf16MatMul`] layout; returns how many. Products it cannot express stay f32.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let candidates: Vec<(usize, Bf16MatMul)> = model
        .nodes()
        .iter()
        .filter_map(|node| {
            let einsum = node.op_as::<EinSum>()?;
            if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() {
                return None;
            }
            if node.inputs.len() != 2 {
                return None;
            }
            let x = model.outlet_fact(node.inputs[0]).ok()?;
            let w = model.outlet_fact(node.inputs[1]).ok()?;
            if x.konst.is_some() || x.datum_type != f32::datum_type() {
                return None;
            }
            let weights = w.konst.as_ref()?;
            if weights.datum_type() != f32::datum_type() {
                return None;
            }
            plan(&einsum.axes.to_string(), weights).map(|op| (node.id, op))
        })
        .collect();
    for (id, op) in &candidates {
        let node = model.node(*id);
        let name = node.name.clone();
        let x = node.inputs[0];
        let mut patch = TypedModelPatch::new(format!("bf16 {name}"));
        let tapped = patch.tap_model(model, x)?;
        let y = patch.wire_node(format!("{name}.bf16"), op.clone(), &[tapped])?[0];
        patch.shunt_outside(model, OutletId::new(*id, 0), y)?;
        patch.apply(model)?;
    }
    Ok(candidates.len())
}

/// The [`Bf16MatMul`] for `expr` (`"xaxes,waxes->outaxes"`, one letter per axis) if it has that
/// layout: `x`'s summed axes trailing and in `w`'s order, `w`'s summed axes all first or all last,
/// and the output made of `x`'s other axes, `w`'s other axes and unit axes.
fn plan(expr: &str, w: &Tensor) -> Option<Bf16MatMul> {
    let (inputs, out) = expr.split_once("->")?;
    let (xs, ws) = inputs.split_once(',')?;
    let (xs, ws, out): (Vec<char>, Vec<char>, Vec<char>) = (
        xs.chars().collect(),
        ws.chars().collect(),
        out.chars().collect(),
    );
    if ws.len() != w.rank() {
        return None;
    }
    let summed: Vec<char> = ws
        .iter()
        .copied()
        .filter(|c| xs.contains(c) && !out.contains(c))
        .collect();
    let w_kept: Vec<char> = ws.iter().copied().filter(|c| !summed.contains(c)).collect();
    let x_kept: Vec<char> = xs.iter().copied().filter(|c| !summed.contains(c)).collect();
    if summed.is_empty() || xs[xs.len() - summed.len()..] != summed[..] {
        return None;
    }
    // An axis of x absent from the output, or shared by x and w without being summed (a
    // batch axis of both), is not a plain product by a matrix.
    if x_kept.iter().any(|c| !out.contains(c) || ws.contains(c))
        || w_kept.iter().any(|c| !out.contains(c))
    {
        return None;
    }
    let summed_first = ws[..summed.len()] == summed[..];
    let summed_last = ws[ws.len() - summed.len()..] == summed[..];
    if !summed_first && !summed_last {
        return None;
    }
    let canonical: Vec<char> = x_kept.iter().chain(&w_kept).copied().collect();
    let out_axes: TVec<OutAxis> = out
        .iter()
        .map(|c| match canonical.iter().position(|a| a == c) {
            Some(i) => OutAxis::Canonical(i),
            None => OutAxis::Unit,
        })
        .collect();
    if out_axes.iter().filter(|a| **a != OutAxis::Unit).count() != canonical.len() {
        return None;
    }
    let shape = w.shape();
    let k: usize = summed
        .iter()
        .map(|c| shape[ws.iter().position(|a| a == c).unwrap()])
        .product();
    let w_kept_dims: TVec<usize> = w_kept
        .iter()
        .map(|c| shape[ws.iter().position(|a| a == c).unwrap()])
        .collect();
    let n: usize = w_kept_dims.iter().product();
    let view = w.to_plain_array_view::<f32>().ok()?;
    let data = view.as_slice()?;
    let weights = if summed_first {
        PackedWeights::pack(k, n, |ki, ni| data[ki * n + ni])
    } else {
        PackedWeights::pack(k, n, |ki, ni| data[ni * k + ki])
    };
    Some(Bf16MatMul {
        weights: Arc::new(weights),
        w_kept: w_kept_dims,
        contracted: summed.len(),
        out_axes,
    })
}

/// `y[r][n] = sum_k x[r][k] * w[k][n]` for `rows` rows of `x` (`k` floats each).
fn matmul(x: &[f32], rows: usize, w: &PackedWeights) -> Vec<f32> {
    let (k, n, kp) = (w.k, w.n, w.kp);
    // The activations as bf16, row by row: u32 `q` of a row holds its `x[2q]` and `x[2q + 1]`.
    let mut xb = vec![0u32; rows * kp];
    for (src, dst) in x.chunks_exact(k).zip(xb.chunks_exact_mut(kp)) {
        for (q, d) in dst.iter_mut().enumerate() {
            let lo = bf16_bits(src[2 * q]);
            let hi = src.get(2 * q + 1).map_or(0, |&v| bf16_bits(v));
            *d = u32::from(lo) | (u32::from(hi) << 16);
        }
    }
    let mut y = vec![0f32; rows * n];
    let run = |first_row: usize, y: &mut [f32]| {
        let chunk_rows = y.len() / n;
        let xb = &xb[first_row * kp..(first_row + chunk_rows) * kp];
        // SAFETY: only reached when `supported()` (checked before any graph is rewritten).
        unsafe { tiles(xb, chunk_rows, w, y) }
    };
    let threads = match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(pool) => Some(pool),
        _ => None,
    };
    match threads {
        Some(pool) if rows >= 2 * NR => {
            // Row ranges, a multiple of NR each, one per thread.
            let per = rows.div_ceil(pool.current_num_threads()).div_ceil(NR) * NR;
            pool.install(|| {
                use rayon::prelude::*;
                y.par_chunks_mut(per * n)
                    .enumerate()
                    .for_each(|(i, chunk)| run(i * per, chunk));
            });
        }
        _ => run(0, &mut y),
    }
    y
}

/// All tiles of `rows` activation rows (bf16 pairs, `w.kp` per row) against every weight panel,
/// into `y` (`rows x w.n`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn tiles(xb: &[u32], rows: usize, w: &PackedWeights, y: &mut [f32]) {
    use std::arch::x86_64::*;
    let (n, kp) = (w.n, w.kp);
    // Blocks of row tiles small enough to stay in L2 while every weight panel passes by.
    const BLOCK: usize = 16 * NR;
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = (r0 + BLOCK).min(rows);
        for p in 0..w.panels() {
            let panel = w.panel(p);
            let n0 = p * MR;
            for t0 in (r0..r1).step_by(NR) {
                let live = (r1 - t0).min(NR);
                // Missing rows of the last tile read row t0 again; their sums are dropped.
                let row =
                    |j: usize| &xb[(t0 + j.min(live - 1)) * kp..(t0 + j.min(live - 1) + 1) * kp];
                let (b0, b1, b2, b3, b4) = (row(0), row(1), row(2), row(3), row(4));
                let mut acc = [_mm512_setzero_ps(); 2 * NR];
                for q in 0..kp {
                    // SAFETY: the panel holds kp x MR u32, so 2 x 16 from q * MR are in it.
                    let (a0, a1) = unsafe {
                        (
                            _mm512_loadu_si512(panel.as_ptr().add(q * MR).cast()),
                            _mm512_loadu_si512(panel.as_ptr().add(q * MR + 16).cast()),
                        )
                    };
                    let (a0, a1) = (as_bf16(a0), as_bf16(a1));
                    for (j, b) in [b0[q], b1[q], b2[q], b3[q], b4[q]].into_iter().enumerate() {
                        let b = as_bf16(_mm512_set1_epi32(b as i32));
                        acc[2 * j] = _mm512_dpbf16_ps(acc[2 * j], a0, b);
                        acc[2 * j + 1] = _mm512_dpbf16_ps(acc[2 * j + 1], a1, b);
                    }
                }
                let width = (n - n0).min(MR);
                for (j, pair) in acc.chunks_exact(2).take(live).enumerate() {
                    let out = &mut y[(t0 + j) * n + n0..(t0 + j) * n + n0 + width];
                    let mut tile = [0f32; MR];
                    // SAFETY: `tile` holds MR = 2 x 16 floats.
                    unsafe {
                        _mm512_storeu_ps(tile.as_mut_ptr(), pair[0]);
                        _mm512_storeu_ps(tile.as_mut_ptr().add(16), pair[1]);
                    }
                    out.copy_from_slice(&tile[..width]);
                }
            }
        }
    }
}

/// The 32 bf16 numbers whose bits `v` holds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_bf16(v: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512bh {
    // SAFETY: both are 64 bytes of plain bits, valid for any bit pattern.
    unsafe { std::mem::transmute::<std::arch::x86_64::__m512i, std::arch::x86_64::__m512bh>(v) }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tiles(_: &[u32], _: usize, _: &PackedWeights, _: &mut [f32]) {
    unreachable!("bf16 products are only enabled on x86-64 with AVX512-BF16")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values, some of them needing rounding in bf16.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let h = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15 ^ seed);
                ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect()
    }

    fn round(x: f32) -> f32 {
        f32::from_bits(u32::from(bf16_bits(x)) << 16)
    }

    /// The exact sum of the bf16-rounded products, in f64.
    fn reference(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                y[r * n + j] = (0..k)
                    .map(|i| f64::from(round(x[r * k + i])) * f64::from(round(w[i * n + j])))
                    .sum();
            }
        }
        y
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and the next bf16 (1 + 2^-7): ties go to even.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.5), 0xc020);
    }

    /// Edge tiles of every kind: rows not a multiple of 5, features not a multiple of 32, an
    /// odd number of summed values, and the row blocks of the tile loop.
    #[test]
    fn products_are_the_sums_of_rounded_products() {
        if !supported() {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return;
        }
        for (rows, k, n) in [
            (1, 8, 32),
            (7, 33, 45),
            (50, 64, 96),
            (81, 17, 5),
            (400, 96, 70),
        ] {
            let x = values(rows * k, 1);
            let w = values(k * n, 2);
            let packed = PackedWeights::pack(k, n, |i, j| w[i * n + j]);
            let y = matmul(&x, rows, &packed);
            let want = reference(&x, &w, rows, k, n);
            for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                // Products of bf16 numbers are exact in f32; only the f32 sums round.
                let tolerance = 1e-5 * (k as f64).sqrt() * want.abs().max(1.0);
                assert!(
                    (f64::from(got) - want).abs() <= tolerance,
                    "{rows}x{k}x{n}, element {i}: {got} against {want}"
                );
            }
        }
    }

    #[test]
    fn products_split_over_a_pool_equal_the_single_thread_ones() {
        if !supported() {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return;
        }
        let (rows, k, n) = (53, 40, 64);
        let x = values(rows * k, 3);
        let w = values(k * n, 4);
        let packed = PackedWeights::pack(k, n, |i, j| w[i * n + j]);
        let alone = matmul(&x, rows, &packed);
        let pool = tract_linalg::multithread::Executor::multithread(2);
        let split =
            tract_linalg::multithread::multithread_tract_scope(pool, || matmul(&x, rows, &packed));
        assert_eq!(alone, split);
    }

    #[test]
    fn the_layouts_of_the_towers_products_are_planned() {
        let w = |shape: &[usize]| Tensor::zero::<f32>(shape).unwrap();
        // The MLP: x [N, 50, 768] . w [768, 3072].
        let mlp = plan("amk,kn->amn", &w(&[8, 12])).expect("planned");
        assert_eq!((mlp.contracted, mlp.weights.k, mlp.weights.n), (1, 8, 12));
        assert_eq!(mlp.out_axes.as_slice(), [0, 1, 2].map(OutAxis::Canonical));
        // The attention's input projection: the output moves axes and gains a unit one.
        let qkv = plan("mak,kn->bamn", &w(&[8, 24])).expect("planned");
        assert_eq!(
            qkv.out_axes.as_slice(),
            [
                OutAxis::Unit,
                OutAxis::Canonical(1),
                OutAxis::Canonical(0),
                OutAxis::Canonical(2)
            ]
        );
        // The output projection sums two axes (heads, head size) of a weight stored [n, a, k].
        let out = plan("bmak,nak->mbn", &w(&[16, 2, 4])).expect("planned");
        assert_eq!((out.contracted, out.weights.k, out.weights.n), (2, 8, 16));
        // Products of two activations' shapes, or summed axes in another order, are not.
        assert!(plan("abmk,abnk->abmn", &w(&[2, 3, 4, 5])).is_none());
        assert!(plan("mka,kn->man", &w(&[8, 12])).is_none());
        assert!(plan("mak,ank->mn", &w(&[3, 8, 4])).is_none());
    }

    /// A rewritten graph computes what the einsum did, up to the rounding of its inputs.
    #[test]
    fn a_rewritten_einsum_keeps_its_output_layout() -> TractResult<()> {
        if !supported() {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return Ok(());
        }
        for (expr, x_shape, w_shape) in [
            (
                "mak,kn->bamn",
                [3usize, 7, 16].as_slice(),
                [16usize, 40].as_slice(),
            ),
            ("bmak,nak->mbn", &[5, 3, 2, 8], &[33, 2, 8]),
        ] {
            let x: Vec<f32> = values(x_shape.iter().product(), 5);
            let w: Vec<f32> = values(w_shape.iter().product(), 6);
            let einsum = |w: &[f32]| -> TractResult<TypedModel> {
                let mut model = TypedModel::default();
                let source = model.add_source("x", f32::fact(x_shape))?;
                let weights = model.add_const("w", Tensor::from_shape(w_shape, w)?)?;
                let axes: AxesMapping = expr.parse()?;
                let op = EinSum::new(axes, f32::datum_type());
                let y = model.wire_node("product", op, &[source, weights])?;
                model.select_output_outlets(&y)?;
                Ok(model)
            };
            // The f32 einsum on inputs already rounded to bf16: the same products, exactly.
            let rounded = |v: &[f32]| v.iter().map(|&a| round(a)).collect::<Vec<f32>>();
            let x_rounded = Tensor::from_shape(x_shape, &rounded(&x))?;
            let want = einsum(&rounded(&w))?
                .into_runnable()?
                .run(tvec!(x_rounded.into_tvalue()))?;
            let mut model = einsum(&w)?;
            assert_eq!(rewrite(&mut model)?, 1, "{expr}");
            let x = Tensor::from_shape(x_shape, &x)?;
            let got = model.into_runnable()?.run(tvec!(x.into_tvalue()))?;
            assert_eq!(got[0].shape(), want[0].shape(), "{expr}");
            let got = got[0].to_plain_array_view::<f32>()?;
            let want = want[0].to_plain_array_view::<f32>()?;
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{expr}: {g} against {w}"
                );
            }
        }
        Ok(())
    }
}
