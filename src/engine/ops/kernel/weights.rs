//! Weights packed once for the tiles of one arithmetic ([`PackedWeights`], [`Packing`]), and the
//! proofs that this CPU runs that arithmetic ([`Avx512Cpu`], [`Bf16Cpu`]), without which no
//! packed weights exist.

use super::{bf16_bits, int16, MR};

/// Proof that this CPU runs AVX512-F: only [`Avx512Cpu::detect`] (or a [`Bf16Cpu`]) makes one,
/// after asking the CPU, and f32 packed weights cannot exist without one, so [`super::matmul`] never
/// reaches the vector code on a CPU without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::engine::ops) struct Avx512Cpu(pub(super) ());

impl From<VnniCpu> for Avx512Cpu {
    /// AVX512-VNNI implies AVX512-F.
    fn from(VnniCpu(()): VnniCpu) -> Avx512Cpu {
        Avx512Cpu(())
    }
}

impl Avx512Cpu {
    /// The proof, where the CPU has the instructions.
    pub(in crate::engine::ops) fn detect() -> Option<Avx512Cpu> {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f").then_some(Avx512Cpu(()))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }
}

/// Proof that this CPU runs AVX512-F and AVX512-BF16: only [`Bf16Cpu::detect`] makes one,
/// after asking the CPU, and packed weights cannot exist without one, so [`super::matmul`] never
/// reaches the vector code on a CPU without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::engine::ops) struct Bf16Cpu(pub(super) ());

impl Bf16Cpu {
    /// The proof, where the CPU has the instructions.
    pub(in crate::engine::ops) fn detect() -> Option<Bf16Cpu> {
        #[cfg(target_arch = "x86_64")]
        {
            (std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16"))
            .then_some(Bf16Cpu(()))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// The CPU has AVX512-F too.
    pub(in crate::engine::ops) fn avx512(self) -> Avx512Cpu {
        Avx512Cpu(())
    }
}

/// Proof that this CPU runs AVX512-F, AVX512-BW and AVX512-VNNI (`vpdpbusd` and `vpdpwssd`, the
/// int8 and 16-bit integer tiles):
/// only [`VnniCpu::detect`] makes one, after asking the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::engine::ops) struct VnniCpu(pub(super) ());

impl VnniCpu {
    /// The proof, where the CPU has the instructions.
    pub(in crate::engine::ops) fn detect() -> Option<VnniCpu> {
        #[cfg(target_arch = "x86_64")]
        {
            (std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni"))
            .then_some(VnniCpu(()))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }
}

/// The arithmetic a product's weights are packed for, with the proof that this CPU runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::engine::ops) enum Packing {
    Bf16(Bf16Cpu),
    F32(Avx512Cpu),
    Int8(VnniCpu),
    Int16(VnniCpu),
}

impl Packing {
    /// `w(k, n)`, the f32 weight of input `k`, output `n`, of `k x n` weights, packed.
    pub(in crate::engine::ops) fn pack(
        self,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
    ) -> PackedWeights {
        match self {
            Packing::Bf16(cpu) => PackedWeights::pack(cpu, k, n, w),
            Packing::F32(cpu) => PackedWeights::pack_f32(cpu, k, n, w),
            Packing::Int8(cpu) => PackedWeights::pack_int8(cpu, k, n, w),
            Packing::Int16(cpu) if k <= int16::MAX_K => PackedWeights::pack_int16(cpu, k, n, w),
            // Sums this long could overflow the 16-bit tiles' i32s.
            Packing::Int16(cpu) => PackedWeights::pack_f32(Avx512Cpu::from(cpu), k, n, w),
        }
    }

    /// Every one needs AVX512-F.
    pub(in crate::engine::ops) fn avx512(self) -> Avx512Cpu {
        match self {
            Packing::Bf16(cpu) => cpu.avx512(),
            Packing::F32(cpu) => cpu,
            Packing::Int8(cpu) | Packing::Int16(cpu) => Avx512Cpu::from(cpu),
        }
    }

    /// The packing of this arithmetic's products that are not quantized: int8 and 16-bit
    /// integers quantize only the products by weights of a tower's blocks, so the attention's
    /// products of two activations and the products that make the embedding run in f32.
    pub(in crate::engine::ops) fn unquantized(self) -> Packing {
        match self {
            Packing::Int8(_) | Packing::Int16(_) => Packing::F32(self.avx512()),
            other => other,
        }
    }
}

/// Weights `[K, N]` packed for one arithmetic's tiles.
#[derive(Debug)]
pub(in crate::engine::ops) struct PackedWeights {
    pub(in crate::engine::ops) k: usize,
    pub(in crate::engine::ops) n: usize,
    pub(in crate::engine::ops) panels: Packed,
}

/// The weights' panels of `MR` output features, in one arithmetic.
#[derive(Debug)]
pub(in crate::engine::ops) enum Packed {
    /// Rounded to bf16: for each pair `q` of `k`, one u32 per feature holding `w[2q][n]` (low
    /// half) and `w[2q + 1][n]` (high half), which is the operand layout of `vdpbf16ps`.
    /// Packing needs the proof, so every product of these weights has it.
    Bf16 {
        cpu: Bf16Cpu,
        /// `ceil(k / 2)`.
        kp: usize,
        data: Vec<u32>,
    },
    /// As they are: for each `k`, one f32 per feature, the operand of an FMA by one
    /// activation broadcast (`fma.rs`).
    F32 { cpu: Avx512Cpu, data: Vec<f32> },
    /// Quantized to int8 per output feature: feature `n`'s weights are `scales[n]` times
    /// integers in -127..=127 (its largest magnitude maps to 127). For each quad `q` of `k`,
    /// one u32 per feature holding `w[4q + i][n]` in byte `i`, which is the operand layout of
    /// `vpdpbusd` (`int8.rs`); `sums[n]` is the sum of feature `n`'s integers, which the tiles
    /// need to take the activations' zero point back out.
    Int8 {
        cpu: VnniCpu,
        /// `ceil(k / 4)`.
        kq: usize,
        data: Vec<u32>,
        /// One per feature, `MR` per panel (0 past `n`).
        scales: Vec<f32>,
        /// One per feature, `MR` per panel (0 past `n`).
        sums: Vec<i32>,
    },
    /// Quantized to 16-bit integers in -511..=511 per output feature (`int16.rs`): feature `n`'s
    /// weights are `scales[n]` times those integers (its largest magnitude maps to 511). For
    /// each pair `q` of `k`, one u32 per feature holding `w[2q][n]` (low half) and `w[2q + 1][n]`
    /// (high half), which is the operand layout of `vpdpwssd` (and the bf16 one's).
    Int16 {
        cpu: VnniCpu,
        /// `ceil(k / 2)`.
        kp: usize,
        data: Vec<u32>,
        /// One per feature, `MR` per panel (0 past `n`).
        scales: Vec<f32>,
    },
}

impl PackedWeights {
    /// `w(k, n)` reads the f32 weight of input `k`, output `n`.
    pub(in crate::engine::ops) fn pack(
        cpu: Bf16Cpu,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
    ) -> PackedWeights {
        let kp = k.div_ceil(2);
        let get = |k_ix: usize, n_ix: usize| {
            if k_ix < k && n_ix < n {
                u32::from(bf16_bits(w(k_ix, n_ix)))
            } else {
                0
            }
        };
        let data = in_panels(n, kp, |q, n_ix| {
            get(2 * q, n_ix) | (get(2 * q + 1, n_ix) << 16)
        });
        PackedWeights {
            k,
            n,
            panels: Packed::Bf16 { cpu, kp, data },
        }
    }

    /// The same weights for the f32 tiles, unrounded.
    pub(in crate::engine::ops) fn pack_f32(
        cpu: Avx512Cpu,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
    ) -> PackedWeights {
        let data = in_panels(
            n,
            k,
            |k_ix, n_ix| if n_ix < n { w(k_ix, n_ix) } else { 0.0 },
        );
        PackedWeights {
            k,
            n,
            panels: Packed::F32 { cpu, data },
        }
    }

    /// The same weights quantized for the int8 tiles ([`Packed::Int8`]): each feature's scale
    /// is its largest magnitude over 127, its integers the weights over the scale rounded to
    /// nearest (ties to even).
    pub(in crate::engine::ops) fn pack_int8(
        cpu: VnniCpu,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
    ) -> PackedWeights {
        let kq = k.div_ceil(4);
        let (scales, ints) = per_feature(cpu, k, n, &w, 127.0);
        let mut sums = vec![0i32; scales.len()];
        let mut data = vec![0u32; scales.len() * kq];
        for (p, panel) in ints.chunks_exact(k * MR).enumerate() {
            let out = &mut data[p * kq * MR..][..kq * MR];
            for (d, row) in panel.chunks_exact(MR).enumerate() {
                let quad = &mut out[d / 4 * MR..][..MR];
                for ((q, &i), sum) in quad.iter_mut().zip(row).zip(&mut sums[p * MR..][..MR]) {
                    *q |= u32::from(i as i8 as u8) << (8 * (d % 4));
                    *sum += i32::from(i);
                }
            }
        }
        PackedWeights {
            k,
            n,
            panels: Packed::Int8 {
                cpu,
                kq,
                data,
                scales,
                sums,
            },
        }
    }

    /// The same weights quantized for the 16-bit integer tiles ([`Packed::Int16`]): each
    /// feature's scale is its largest magnitude over 511, its integers the weights over the
    /// scale rounded to nearest (ties to even). `k` is at most [`int16::MAX_K`].
    pub(in crate::engine::ops) fn pack_int16(
        cpu: VnniCpu,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
    ) -> PackedWeights {
        assert!(k <= int16::MAX_K, "sums over {k} could overflow");
        let kp = k.div_ceil(2);
        let (scales, ints) = per_feature(cpu, k, n, &w, int16::LEVELS);
        let mut data = vec![0u32; scales.len() * kp];
        for (p, panel) in ints.chunks_exact(k * MR).enumerate() {
            let out = &mut data[p * kp * MR..][..kp * MR];
            for (d, row) in panel.chunks_exact(MR).enumerate() {
                let pair = &mut out[d / 2 * MR..][..MR];
                for (q, &i) in pair.iter_mut().zip(row) {
                    *q |= u32::from(i as u16) << (16 * (d % 2));
                }
            }
        }
        PackedWeights {
            k,
            n,
            panels: Packed::Int16 {
                cpu,
                kp,
                data,
                scales,
            },
        }
    }

    /// Bytes the packed weights hold.
    pub(in crate::engine::ops) fn bytes(&self) -> usize {
        match &self.panels {
            Packed::Bf16 { data, .. } => std::mem::size_of_val(data.as_slice()),
            Packed::F32 { data, .. } => std::mem::size_of_val(data.as_slice()),
            Packed::Int8 {
                data, scales, sums, ..
            } => {
                std::mem::size_of_val(data.as_slice())
                    + std::mem::size_of_val(scales.as_slice())
                    + std::mem::size_of_val(sums.as_slice())
            }
            Packed::Int16 { data, scales, .. } => {
                std::mem::size_of_val(data.as_slice()) + std::mem::size_of_val(scales.as_slice())
            }
        }
    }

    /// Whether these are bf16 weights (else f32 or integers).
    pub(in crate::engine::ops) fn is_bf16(&self) -> bool {
        matches!(self.panels, Packed::Bf16 { .. })
    }

    /// The arithmetic's name in op names: `Bf16`, `F32`, `Int8` or `Int16`.
    pub(in crate::engine::ops) fn kind(&self) -> &'static str {
        match self.panels {
            Packed::Bf16 { .. } => "Bf16",
            Packed::F32 { .. } => "F32",
            Packed::Int8 { .. } => "Int8",
            Packed::Int16 { .. } => "Int16",
        }
    }
}

/// Each of the `n` features' `k` weights (`w(k, n)`) quantized to integers in
/// `-levels..=levels`: the feature's scale is its largest magnitude over `levels`, its
/// integers the weights over the scale rounded to nearest (ties to even). The scales, `MR` per
/// panel (0 past `n`, and for a feature of zeros or with an infinite weight, whose integers are
/// 0; a NaN weight's integer is 0), and the integers in the f32 panels' layout
/// ([`in_panels`] with depth `k`), which they are computed from: each step of a panel is the
/// `MR` features' weights side by side, so the loops run along memory, whatever the order `w`
/// reads its matrix in.
fn per_feature(
    cpu: VnniCpu,
    k: usize,
    n: usize,
    w: &impl Fn(usize, usize) -> f32,
    levels: f32,
) -> (Vec<f32>, Vec<i16>) {
    let floats = in_panels(
        n,
        k,
        |k_ix, n_ix| if n_ix < n { w(k_ix, n_ix) } else { 0.0 },
    );
    let mut scales = vec![0f32; n.div_ceil(MR) * MR];
    let mut ints = vec![0i16; floats.len()];
    let VnniCpu(()) = cpu;
    // SAFETY: a `VnniCpu` only exists where the CPU has AVX512-F.
    unsafe { quantize_panels(&floats, k, levels, &mut scales, &mut ints) };
    (scales, ints)
}

/// [`per_feature`]'s loops, compiled for AVX512-F: its rounding is then one instruction, not
/// a call a value (a third of the time of packing a tower at start-up).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn quantize_panels(
    floats: &[f32],
    k: usize,
    levels: f32,
    scales: &mut [f32],
    ints: &mut [i16],
) {
    let panels = floats
        .chunks_exact(k * MR)
        .zip(ints.chunks_exact_mut(k * MR));
    for ((panel, out), scale) in panels.zip(scales.chunks_exact_mut(MR)) {
        let mut top = [0f32; MR];
        for step in panel.chunks_exact(MR) {
            for (t, v) in top.iter_mut().zip(step) {
                *t = t.max(v.abs());
            }
        }
        for (s, t) in scale.iter_mut().zip(top) {
            *s = if t > 0.0 && t.is_finite() {
                t / levels
            } else {
                0.0
            };
        }
        for (step, ints) in panel.chunks_exact(MR).zip(out.chunks_exact_mut(MR)) {
            for ((i, &v), &s) in ints.iter_mut().zip(step).zip(&*scale) {
                if s > 0.0 {
                    *i = (v / s).round_ties_even().clamp(-levels, levels) as i16;
                }
            }
        }
    }
}

/// Panels of `MR` features for `n` features, `depth` elements (`at(depth index, feature)`)
/// per feature and panel: element `(p * depth + d) * MR + r` is feature `p * MR + r`'s `d`-th.
fn in_panels<T: Default + Clone>(n: usize, depth: usize, at: impl Fn(usize, usize) -> T) -> Vec<T> {
    let panels = n.div_ceil(MR);
    let mut data = vec![T::default(); panels * depth * MR];
    for p in 0..panels {
        for d in 0..depth {
            for r in 0..MR {
                data[(p * depth + d) * MR + r] = at(d, p * MR + r);
            }
        }
    }
    data
}

/// The right operand of a product in [`PackedWeights`]' layout: panels of `MR` output features,
/// `depth` elements per feature and panel: u32 bf16 pairs (`ceil(k / 2)`) or f32 (`k`). Packed
/// once for weights, per run for the attention's activations (`activation_product`).
#[derive(Clone, Copy)]
pub(super) struct Panels<'a, T> {
    pub(super) n: usize,
    pub(super) depth: usize,
    pub(super) data: &'a [T],
}

impl<T> Panels<'_, T> {
    pub(super) fn panel(&self, p: usize) -> &[T] {
        &self.data[p * self.depth * MR..(p + 1) * self.depth * MR]
    }

    pub(super) fn panels(&self) -> usize {
        self.n.div_ceil(MR)
    }
}
