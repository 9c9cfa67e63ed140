//! A set of small integers with O(log64 n) insert, remove and minimum:
//! at most 4 word operations per call for up to 16 million members.

#[derive(Debug, Clone)]
pub(crate) struct RankSet {
    /// levels[0] holds one bit per member; levels[k+1] one bit per
    /// non-zero word of levels[k]. The last level is a single word.
    levels: Vec<Vec<u64>>,
}

impl RankSet {
    pub(crate) fn new(capacity: usize) -> Self {
        let mut levels = Vec::new();
        let mut words = capacity.div_ceil(64).max(1);
        loop {
            levels.push(vec![0u64; words]);
            if words == 1 {
                break;
            }
            words = words.div_ceil(64);
        }
        RankSet { levels }
    }

    pub(crate) fn insert(&mut self, mut i: usize) {
        for level in &mut self.levels {
            let (w, b) = (i / 64, i % 64);
            let was_empty = level[w] == 0;
            level[w] |= 1 << b;
            if !was_empty {
                return;
            }
            i = w;
        }
    }

    pub(crate) fn remove(&mut self, mut i: usize) {
        for level in &mut self.levels {
            let (w, b) = (i / 64, i % 64);
            level[w] &= !(1 << b);
            if level[w] != 0 {
                return;
            }
            i = w;
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.levels[0][i / 64] & (1 << (i % 64)) != 0
    }

    pub(crate) fn first(&self) -> Option<usize> {
        let mut i = 0;
        for level in self.levels.iter().rev() {
            let w = level[i];
            if w == 0 {
                return None;
            }
            i = i * 64 + w.trailing_zeros() as usize;
        }
        Some(i)
    }

    /// Members in ascending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.levels[0].iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + b
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RankSet;
    use std::collections::BTreeSet;

    #[test]
    fn matches_a_btreeset() {
        let n = 300_000;
        let mut s = RankSet::new(n);
        let mut model = BTreeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % n as u64) as usize;
            if x & (1 << 40) == 0 {
                s.insert(i);
                model.insert(i);
            } else {
                s.remove(i);
                model.remove(&i);
            }
            assert_eq!(s.first(), model.iter().next().copied());
            assert_eq!(s.contains(i), model.contains(&i));
        }
        assert!(s.iter().eq(model.iter().copied()));
    }
}
