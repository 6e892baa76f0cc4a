//! Weights packed once for the tiles of one arithmetic ([`PackedWeights`], [`Packing`]), and the
//! proofs that this CPU runs that arithmetic ([`Avx512Cpu`], [`Bf16Cpu`]), without which no
//! packed weights exist.

use super::{bf16_bits, MR};

/// Proof that this CPU runs AVX512-F: only [`Avx512Cpu::detect`] (or a [`Bf16Cpu`]) makes one,
/// after asking the CPU, and f32 packed weights cannot exist without one, so [`super::matmul`] never
/// reaches the vector code on a CPU without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::engine::bf16) struct Avx512Cpu(pub(super) ());

impl Avx512Cpu {
    /// The proof, where the CPU has the instructions.
    pub(in crate::engine::bf16) fn detect() -> Option<Avx512Cpu> {
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
pub(in crate::engine::bf16) struct Bf16Cpu(pub(super) ());

impl Bf16Cpu {
    /// The proof, where the CPU has the instructions.
    pub(in crate::engine::bf16) fn detect() -> Option<Bf16Cpu> {
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
    pub(in crate::engine::bf16) fn avx512(self) -> Avx512Cpu {
        Avx512Cpu(())
    }
}

/// The arithmetic a product's weights are packed for, with the proof that this CPU runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(in crate::engine::bf16) enum Packing {
    Bf16(Bf16Cpu),
    F32(Avx512Cpu),
}

impl Packing {
    /// `w(k, n)`, the f32 weight of input `k`, output `n`, of `k x n` weights, packed.
    pub(in crate::engine::bf16) fn pack(
        self,
        k: usize,
        n: usize,
        w: impl Fn(usize, usize) -> f32,
    ) -> PackedWeights {
        match self {
            Packing::Bf16(cpu) => PackedWeights::pack(cpu, k, n, w),
            Packing::F32(cpu) => PackedWeights::pack_f32(cpu, k, n, w),
        }
    }

    /// Either needs AVX512-F.
    pub(in crate::engine::bf16) fn avx512(self) -> Avx512Cpu {
        match self {
            Packing::Bf16(cpu) => cpu.avx512(),
            Packing::F32(cpu) => cpu,
        }
    }
}

/// Weights `[K, N]` packed for one arithmetic's tiles.
#[derive(Debug)]
pub(in crate::engine::bf16) struct PackedWeights {
    pub(in crate::engine::bf16) k: usize,
    pub(in crate::engine::bf16) n: usize,
    pub(in crate::engine::bf16) panels: Packed,
}

/// The weights' panels of `MR` output features, in one arithmetic.
#[derive(Debug)]
pub(in crate::engine::bf16) enum Packed {
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
}

impl PackedWeights {
    /// `w(k, n)` reads the f32 weight of input `k`, output `n`.
    pub(in crate::engine::bf16) fn pack(
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
    pub(in crate::engine::bf16) fn pack_f32(
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

    /// Bytes the packed weights hold.
    pub(in crate::engine::bf16) fn bytes(&self) -> usize {
        match &self.panels {
            Packed::Bf16 { data, .. } => std::mem::size_of_val(data.as_slice()),
            Packed::F32 { data, .. } => std::mem::size_of_val(data.as_slice()),
        }
    }

    /// Whether these are bf16 weights (else f32).
    pub(in crate::engine::bf16) fn is_bf16(&self) -> bool {
        matches!(self.panels, Packed::Bf16 { .. })
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
