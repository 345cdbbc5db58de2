//! Checks on caller memory given as address ranges, for the faces that take bare
//! addresses or several buffers in one call.

/// For each `(start, len)` range, whether it must be refused so that the ranges kept
/// are pairwise disjoint (two `&mut` slices over them never alias): in address order,
/// a range is marked when it starts before the furthest end seen so far, and so is the
/// range that reached that end. Every range that overlaps another is marked or
/// overlaps only marked ones.
pub fn overlapping(ranges: &[(usize, usize)]) -> Vec<bool> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_unstable_by_key(|&i| ranges[i].0);
    let mut marked = vec![false; ranges.len()];
    let mut furthest: Option<(usize, usize)> = None; // (end, index)
    for i in order {
        let (start, len) = ranges[i];
        let end = start.saturating_add(len);
        match furthest {
            Some((far_end, holder)) => {
                if start < far_end {
                    marked[i] = true;
                    marked[holder] = true;
                }
                if end > far_end {
                    furthest = Some((end, i));
                }
            }
            None => furthest = Some((end, i)),
        }
    }
    marked
}

/// Copies `value` across `bufs` in order; its length, or `None` (nothing copied) if
/// the buffers together are smaller.
pub fn scatter(value: &[u8], bufs: &mut [&mut [u8]]) -> Option<usize> {
    if bufs.iter().map(|b| b.len()).sum::<usize>() < value.len() {
        return None;
    }
    let mut rest = value;
    for buf in bufs.iter_mut() {
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    Some(value.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn disjoint(a: (usize, usize), b: (usize, usize)) -> bool {
        a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0
    }

    #[test]
    fn overlapping_ranges_are_refused_and_the_rest_are_disjoint() {
        let ranges = [(0, 10), (2, 1), (20, 5), (5, 1), (25, 5), (100, 50), (120, 1)];
        assert_eq!(overlapping(&ranges), [true, true, false, true, false, true, true]);
    }

    proptest! {
        #[test]
        fn the_ranges_kept_never_overlap_and_disjoint_ones_are_kept(
            ranges in proptest::collection::vec((0usize..200, 1usize..40), 0..12)
        ) {
            let refused = overlapping(&ranges);
            for (i, &a) in ranges.iter().enumerate() {
                let overlaps_any = ranges.iter().enumerate().any(|(j, &b)| j != i && !disjoint(a, b));
                if !overlaps_any {
                    prop_assert!(!refused[i], "{a:?} overlaps nothing but was refused");
                }
                for (j, &b) in ranges.iter().enumerate().skip(i + 1) {
                    if !refused[i] && !refused[j] {
                        prop_assert!(disjoint(a, b), "{a:?} and {b:?} both kept");
                    }
                }
            }
        }
    }

    #[test]
    fn a_value_is_scattered_in_order_or_refused_when_it_does_not_fit() {
        let (mut a, mut b) = ([0u8; 3], [0u8; 4]);
        assert_eq!(scatter(b"abcdef", &mut [&mut a, &mut b]), Some(6));
        assert_eq!((&a, &b[..3]), (b"abc", &b"def"[..]));
        assert_eq!(scatter(b"abcdefgh", &mut [&mut a, &mut b]), None);
    }
}
