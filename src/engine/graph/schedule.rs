//! How a batch is cut into runs of a graph's plans: a fixed-batch plan padded up when at most a
//! quarter of it would be padding, else the largest that fills, at the shortest bucketed length
//! that holds the texts; the symbolic plan when no bucket fits.

use super::{Axis, Graph, GraphError, Plan};

impl Graph {
    /// Splits `n` items of sequence length `s` into runs, in order. Each run names its plan and
    /// the padded batch size and length it must be given; the caller fills the padding.
    pub fn schedule(&self, n: usize, s: usize) -> Result<Vec<Run>, GraphError> {
        let mut runs = Vec::new();
        let mut left = n;
        while left > 0 {
            let run = self.next_run(left, s)?;
            left -= run.items;
            runs.push(run);
        }
        Ok(runs)
    }

    /// The shortest bucketed length that holds `s` tokens at batch `b` (0 for images).
    fn seq_bucket(&self, b: usize, s: usize) -> Option<usize> {
        self.fixed
            .keys()
            .filter(|(pb, ps)| *pb == b && (!self.is_text() || *ps >= s))
            .map(|(_, ps)| *ps)
            .min()
    }

    fn next_run(&self, left: usize, s: usize) -> Result<Run, GraphError> {
        let batches = self.fixed_batches();
        let with_seq = |b: usize| self.seq_bucket(b, s).map(|ps| (b, ps));
        // Pad up to a bucket when at most a quarter of it would be padding, else take the
        // largest bucket that fills completely.
        let up = batches
            .iter()
            .find(|&&b| b >= left && 4 * left >= 3 * b)
            .and_then(|&b| with_seq(b));
        let down = batches
            .iter()
            .rev()
            .find(|&&b| b <= left)
            .and_then(|&b| with_seq(b));
        if let Some((b, ps)) = up.or(down) {
            return Ok(Run {
                items: left.min(b),
                batch: b,
                seq: ps,
                plan: self.fixed[&(b, ps)].clone(),
            });
        }
        if let Some(plan) = &self.symbolic {
            let batch = self.input_shape[0].fixed().unwrap_or(left);
            let seq = match self.input_shape.get(1) {
                Some(Axis::Fixed(fixed)) if self.is_text() => *fixed,
                _ => s,
            };
            return Ok(Run {
                items: left.min(batch),
                batch,
                seq,
                plan: plan.clone(),
            });
        }
        // Only buckets, all larger than what is left: pad up to the smallest that fits.
        let (b, ps) = batches.iter().find_map(|&b| with_seq(b)).ok_or_else(|| {
            GraphError::Run(format!(
                "no plan of {} takes {left} items of length {s}",
                self.path.display()
            ))
        })?;
        Ok(Run {
            items: left.min(b),
            batch: b,
            seq: ps,
            plan: self.fixed[&(b, ps)].clone(),
        })
    }
}

/// One run of a plan over a slice of the batch.
#[derive(Clone)]
pub struct Run {
    /// How many real items this run takes.
    pub items: usize,
    /// The batch size the plan is run at (items plus padding rows).
    pub batch: usize,
    /// The sequence length to pad to (0 for images).
    pub seq: usize,
    /// The plan to run.
    pub plan: Plan,
}
