//! The image tower's patch embedding in bf16: a convolution whose strides equal its kernel
//! (ViT-B/32: 3 x 32 x 32 pixels to 768 features, 49 patches per image) is one product of the
//! image's patches by the kernel. [`PatchEmbed`] lays the patches out as rows (each row a
//! patch, in the kernel's `[channel, row, column]` order) and runs them through the bf16
//! product of [`super::WeightMatMul`], with the kernel packed once at load. tract ran it as an
//! f32 `Im2col` and `OptMatMul`: 2.6 ms of an image's 52 ms on one thread.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::kernel::{matmul, Activations, Epilogue, Output, PackedWeights, Packing};

/// `y[b][o][i][j] = sum_{c,u,v} x[b][c][i*ph + u][j*pw + v] * w[o][c][u][v] + bias[o]`: a
/// convolution of an NCHW image by an OIHW kernel whose strides are its size, without padding
/// or dilation, with bf16 products.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    /// The kernel as a `[C * ph * pw, O]` product's right operand.
    weights: Arc<PackedWeights>,
    /// Per output channel, when not all zero.
    bias: Option<Arc<Vec<f32>>>,
    channels: usize,
    /// The patch's height and width (the kernel's, and the strides).
    patch: (usize, usize),
}

impl PartialEq for PatchEmbed {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
            && self.bias.as_ref().map(Arc::as_ptr) == other.bias.as_ref().map(Arc::as_ptr)
            && self.channels == other.channels
            && self.patch == other.patch
    }
}
impl Eq for PatchEmbed {}

impl Hash for PatchEmbed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.weights) as usize).hash(state);
        self.bias
            .as_ref()
            .map(|b| Arc::as_ptr(b) as usize)
            .hash(state);
        self.channels.hash(state);
        self.patch.hash(state);
    }
}

impl PatchEmbed {
    /// The op for `conv` reading `x` with the constant `kernel` and `bias`, if it is a patch
    /// embedding: NCHW input of known height and width, each a multiple of the kernel's, OIHW
    /// kernel, one group, strides equal to the kernel, no padding, no dilation, f32.
    pub(super) fn plan(
        conv: &Conv,
        x: &TypedFact,
        kernel: &Tensor,
        bias: Option<&Tensor>,
        packing: Packing,
    ) -> Option<PatchEmbed> {
        let spec = &conv.pool_spec;
        if conv.q_params.is_some()
            || conv.group != 1
            || conv.kernel_fmt != KernelFormat::OIHW
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || x.rank() != 4
            || x.datum_type != f32::datum_type()
            || kernel.datum_type() != f32::datum_type()
            || kernel.rank() != 4
        {
            return None;
        }
        let (ph, pw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let unpadded = match &spec.padding {
            PaddingSpec::Valid => true,
            PaddingSpec::Explicit(before, after) => before.iter().chain(after).all(|&p| p == 0),
            PaddingSpec::ExplicitOnnxPool(before, after, _) => {
                before.iter().chain(after).all(|&p| p == 0)
            }
            _ => false,
        };
        let strides_are_kernel = spec.strides.as_deref() == Some(&[ph, pw][..]);
        let undilated = spec
            .dilations
            .as_ref()
            .is_none_or(|d| d.iter().all(|&d| d == 1));
        let (h, w) = (x.shape[2].to_usize().ok()?, x.shape[3].to_usize().ok()?);
        let channels = x.shape[1].to_usize().ok()?;
        let out = kernel.shape()[0];
        if !unpadded
            || !strides_are_kernel
            || !undilated
            || ph == 0
            || pw == 0
            || h % ph != 0
            || w % pw != 0
            || kernel.shape() != [out, channels, ph, pw]
        {
            return None;
        }
        let bias = match bias {
            None => None,
            Some(b) => {
                let b = b.cast_to::<f32>().ok()?;
                let values = b.to_plain_array_view::<f32>().ok()?;
                let values: Vec<f32> = values.iter().copied().collect();
                match values.len() {
                    1 => Some(vec![values[0]; out]),
                    n if n == out => Some(values),
                    _ => return None,
                }
            }
        }
        .filter(|b| b.iter().any(|&v| v != 0.0))
        .map(Arc::new);
        let view = kernel.to_plain_array_view::<f32>().ok()?;
        let data = view.as_slice()?;
        let k = channels * ph * pw;
        // OIHW is `[O, k]` with k in the order patches are laid out below.
        let weights = packing.pack(k, out, |ki, ni| data[ni * k + ki]);
        Some(PatchEmbed {
            weights: Arc::new(weights),
            bias,
            channels,
            patch: (ph, pw),
        })
    }
}

impl Op for PatchEmbed {
    fn name(&self) -> StaticName {
        format!("{}Patches", self.weights.kind()).into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "patch {}x{}, k={} n={}",
            self.patch.0, self.patch.1, self.weights.k, self.weights.n
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for PatchEmbed {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let x = x.to_plain_array_view::<f32>()?;
        let x = x.as_standard_layout();
        let &[batch, channels, h, w] = x.shape() else {
            bail!("image of shape {:?}", x.shape());
        };
        ensure!(channels == self.channels, "{channels} channels");
        let (ph, pw) = self.patch;
        let (oh, ow) = (h / ph, w / pw);
        let x = x.as_slice().context("contiguous image")?;
        let k = self.weights.k;
        let rows = batch * oh * ow;
        // Each patch as a row of k values, in the kernel's [channel, row, column] order.
        let mut patches = vec![0f32; rows * k];
        for (r, row) in patches.chunks_exact_mut(k).enumerate() {
            let (b, i, j) = (r / (oh * ow), r / ow % oh, r % ow);
            for c in 0..channels {
                for u in 0..ph {
                    let src = ((b * channels + c) * h + i * ph + u) * w + j * pw;
                    let dst = (c * ph + u) * pw;
                    row[dst..dst + pw].copy_from_slice(&x[src..src + pw]);
                }
            }
        }
        let epilogue = Epilogue {
            bias: self.bias.as_deref().map(Vec::as_slice),
            gelu: false,
        };
        let n = self.weights.n;
        let x = Activations::F32 {
            x: &patches,
            sources: None,
            norm: None,
        };
        let shape = [batch, oh, ow, n];
        let y = matmul(x, rows, &self.weights, epilogue, Output::F32, &shape)?;
        Ok(tvec!(y.permute_axes(&[0, 3, 1, 2])?.into_tvalue()))
    }
}

impl TypedOp for PatchEmbed {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        let (ph, pw) = self.patch;
        let (h, w) = (shape[2].to_usize()?, shape[3].to_usize()?);
        Ok(tvec!(f32::fact([
            shape[0].clone(),
            self.weights.n.to_dim(),
            (h / ph).to_dim(),
            (w / pw).to_dim(),
        ])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::super::kernel::testing::{
        arithmetics, as_read, assert_sums_close, run, run_alone_and_split, values,
    };
    use super::*;
    use crate::engine::precision::Arithmetic;

    fn conv_model(kernel: &[f32], bias: &[f32], ks: [usize; 4], xs: [usize; 4]) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(xs)).unwrap();
        let k = model
            .add_const("k", Tensor::from_shape(&ks, kernel).unwrap())
            .unwrap();
        let b = model
            .add_const("b", Tensor::from_shape(&[bias.len()], bias).unwrap())
            .unwrap();
        let spec = tract_onnx::tract_core::ops::cnn::PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(ks[2], ks[3]),
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: Some(tvec!(ks[2], ks[3])),
            input_channels: ks[1],
            output_channels: ks[0],
        };
        let conv = Conv {
            pool_spec: spec,
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, k, b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// The rewritten convolution gives tract's f32 convolution of the image by the kernel as
    /// the product reads them (rounded, in bf16), bias added, in the convolution's layout, on
    /// one thread and split, in either arithmetic.
    #[test]
    fn patches_are_the_convolution_of_rounded_inputs() -> TractResult<()> {
        for arithmetic in arithmetics() {
            patches_in(arithmetic)?;
        }
        Ok(())
    }

    fn patches_in(arithmetic: Arithmetic) -> TractResult<()> {
        // 3 channels, 4 x 6 patches, 37 outputs, 3 x 2 patches per image, 3 images.
        let (ks, xs) = ([37, 3, 4, 6], [3, 3, 12, 12]);
        let kernel = values(ks.iter().product(), 21);
        let bias = values(37, 22);
        let x = values(xs.iter().product(), 23);
        let read = |v: &[f32]| as_read(arithmetic, v);
        let want = run(
            conv_model(&read(&kernel), &bias, ks, xs),
            &[(&xs, &read(&x))],
        );
        let mut model = conv_model(&kernel, &bias, ks, xs);
        assert_eq!(super::super::rewrite(&mut model, arithmetic)?.by_weights, 1);
        assert!(model.nodes().iter().any(|n| n.op_is::<PatchEmbed>()));
        let got = run_alone_and_split(model, &[(&xs, &x)]);
        assert_eq!(got.shape(), [3, 37, 3, 2]);
        assert_sums_close(&got, &want, 72, arithmetic.as_str());
        Ok(())
    }

    /// Overlapping or padded windows are convolutions proper, left to tract.
    #[test]
    fn other_convolutions_are_not_rewritten() -> TractResult<()> {
        if !super::super::bf16_supported() {
            eprintln!("no AVX512-BF16 on this CPU: the bf16 products are never used here");
            return Ok(());
        }
        let (ks, xs) = ([5, 3, 4, 4], [1, 3, 8, 8]);
        let kernel = values(ks.iter().product(), 1);
        for change in [
            |c: &mut Conv| c.pool_spec.strides = Some(tvec!(2, 2)),
            |c: &mut Conv| c.pool_spec.padding = PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
            |c: &mut Conv| c.pool_spec.dilations = Some(tvec!(2, 2)),
        ] {
            let mut model = conv_model(&kernel, &[0.0; 5], ks, xs);
            let id = model
                .nodes()
                .iter()
                .position(|n| n.op_is::<Conv>())
                .unwrap();
            let mut conv = model.node(id).op_as::<Conv>().unwrap().clone();
            change(&mut conv);
            model.node_mut(id).op = Box::new(conv);
            assert_eq!(
                super::super::rewrite(&mut model, Arithmetic::Bf16)?.by_weights,
                0
            );
        }
        Ok(())
    }
}
