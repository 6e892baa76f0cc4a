//! The byte trie of [`LeanUnigram`](super::LeanUnigram)'s pieces, in three flat arrays.

use super::NONE;

/// A byte trie in breadth-first order: node 0 is the root, node `n`'s children are nodes
/// `nodes[n].first_child..nodes[n + 1].first_child`, sorted by their `labels` (a last,
/// childless node closes the list).
#[derive(Clone)]
pub(super) struct Trie {
    /// The root's child for each byte, or [`NONE`]: every start position of the Viterbi pass
    /// begins there, and the root has the most children (141 in XLM-R).
    root: Box<[u32; 256]>,
    nodes: Box<[Node]>,
    /// The byte leading to each node from its parent.
    labels: Box<[u8]>,
}

/// One trie node; its children's range and its piece sit in one cache line, read together
/// at every step of a walk.
#[derive(Clone, Copy)]
struct Node {
    first_child: u32,
    /// The id of the piece that ends here, or [`NONE`].
    id: u32,
}

impl Trie {
    /// Builds the trie of the pieces `key(0..count)`; of equal pieces the highest id wins,
    /// as the crate's `HashMap` insertions in id order leave it.
    pub(super) fn build<'a>(count: usize, key: impl Fn(u32) -> &'a [u8]) -> Self {
        let mut order: Vec<u32> = (0..count as u32).collect();
        order.sort_unstable_by(|&a, &b| key(a).cmp(key(b)).then(a.cmp(&b)));
        let unset = Node {
            first_child: 0,
            id: NONE,
        };
        let mut nodes = vec![unset];
        let mut labels = vec![0u8];
        // The key ranges of the nodes not expanded yet, in node order (breadth first).
        let mut pending = std::collections::VecDeque::from([(0usize, count, 0usize)]);
        let mut node = 0;
        while let Some((mut lo, hi, depth)) = pending.pop_front() {
            // Sorted, so the pieces ending at this node come first; the last has the top id.
            while lo < hi && key(order[lo]).len() == depth {
                nodes[node].id = order[lo];
                lo += 1;
            }
            nodes[node].first_child = labels.len() as u32;
            while lo < hi {
                let label = key(order[lo])[depth];
                let mut end = lo + 1;
                while end < hi && key(order[end])[depth] == label {
                    end += 1;
                }
                labels.push(label);
                nodes.push(unset);
                pending.push_back((lo, end, depth + 1));
                lo = end;
            }
            node += 1;
        }
        nodes.push(Node {
            first_child: labels.len() as u32,
            id: NONE,
        });
        let mut root = Box::new([NONE; 256]);
        for child in nodes[0].first_child..nodes[1].first_child {
            root[labels[child as usize] as usize] = child;
        }
        Self {
            root,
            nodes: nodes.into(),
            labels: labels.into(),
        }
    }

    /// How many nodes the trie has, the root included.
    pub(super) fn len(&self) -> usize {
        self.labels.len()
    }

    fn child(&self, node: usize, label: u8) -> Option<usize> {
        let first = self.nodes[node].first_child as usize;
        let end = self.nodes[node + 1].first_child as usize;
        let siblings = &self.labels[first..end];
        // Most nodes have a few children, where a scan beats a binary search.
        let i = if siblings.len() <= 16 {
            siblings.iter().position(|&l| l == label)?
        } else {
            siblings.binary_search(&label).ok()?
        };
        Some(first + i)
    }

    /// Calls `found(len, id)` for every piece that is a prefix of `text`, shortest first.
    pub(super) fn prefixes(&self, text: &[u8], mut found: impl FnMut(usize, u32)) {
        let Some((&first, rest)) = text.split_first() else {
            return;
        };
        let node = self.root[first as usize];
        if node == NONE {
            return;
        }
        let mut node = node as usize;
        if self.nodes[node].id != NONE {
            found(1, self.nodes[node].id);
        }
        for (i, &byte) in rest.iter().enumerate() {
            match self.child(node, byte) {
                Some(next) => node = next,
                None => return,
            }
            if self.nodes[node].id != NONE {
                found(i + 2, self.nodes[node].id);
            }
        }
    }

    /// The id of the piece `text`, if it is one.
    pub(super) fn get(&self, text: &[u8]) -> Option<u32> {
        let mut node = 0;
        for &byte in text {
            node = self.child(node, byte)?;
        }
        let id = self.nodes[node].id;
        (id != NONE).then_some(id)
    }
}
