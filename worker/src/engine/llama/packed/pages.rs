//! The byte buffers packed weights live in: large ones are mapped apart and advised into
//! transparent huge pages (where the OS offers them), so the stream of weights a decode step reads
//! walks 2 MiB pages instead of 4 KiB ones; small ones stay on the heap.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// One huge page: buffers of at least this size are mapped apart, and their mapping is rounded up
/// to a whole number of them.
const HUGE_PAGE: usize = 2 << 20;

/// A zero-initialised byte buffer of a fixed length.
pub(crate) enum WeightBytes {
    /// Below [`HUGE_PAGE`], or where no mapping could be made.
    Heap(Vec<u8>),
    /// An anonymous mapping advised for huge pages, of which the first `len` bytes are the buffer.
    Mapped { map: memmap2::MmapMut, len: usize },
}

impl WeightBytes {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        if len >= HUGE_PAGE {
            if let Ok(map) = memmap2::MmapOptions::new().len(len.next_multiple_of(HUGE_PAGE)).map_anon() {
                // Advice only: where the OS has no huge pages to give, the buffer keeps ordinary ones.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                return Self::Mapped { map, len };
            }
        }
        Self::Heap(vec![0; len])
    }

    /// Whether the buffer is a mapping of its own (advised for huge pages), not heap memory.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self, Self::Mapped { .. })
    }
}

impl Deref for WeightBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Heap(v) => v,
            Self::Mapped { map, len } => &map[..*len],
        }
    }
}

impl DerefMut for WeightBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Heap(v) => v,
            Self::Mapped { map, len } => &mut map[..*len],
        }
    }
}

impl Clone for WeightBytes {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len());
        copy.copy_from_slice(self);
        copy
    }
}

impl fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightBytes").field("len", &self.len()).field("mapped", &self.is_mapped()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_stay_on_the_heap_and_large_ones_are_mapped_zeroed_and_writable() {
        let small = WeightBytes::zeroed(1000);
        assert!(!small.is_mapped());
        assert_eq!(small.len(), 1000);
        let len = HUGE_PAGE + 12_345;
        let mut large = WeightBytes::zeroed(len);
        assert!(large.is_mapped(), "{large:?}");
        assert_eq!(large.len(), len, "the rounding of the mapping is not part of the buffer");
        assert!(large.iter().all(|&b| b == 0));
        large[0] = 1;
        large[len - 1] = 2;
        let copy = large.clone();
        assert!(copy.is_mapped());
        assert_eq!(&copy[..], &large[..]);
        assert_eq!((copy[0], copy[len - 1]), (1, 2));
    }

    /// Where the kernel offers transparent huge pages at all (`always` or `madvise`), the large
    /// buffer's mapping is eligible for them: `/proc/self/smaps` says so of the mapping that holds it.
    #[cfg(target_os = "linux")]
    #[test]
    fn large_buffers_are_eligible_for_huge_pages_where_the_os_offers_them() {
        let Ok(mode) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") else {
            eprintln!("no transparent huge pages in this kernel: nothing to check");
            return;
        };
        if mode.contains("[never]") {
            eprintln!("transparent huge pages are off on this machine: nothing to check");
            return;
        }
        let buffer = WeightBytes::zeroed(3 * HUGE_PAGE);
        let at = buffer.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut eligible = None;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((Ok(lo), Ok(hi))) = range.map(|(lo, hi)| (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))) {
                inside = (lo..hi).contains(&at);
            } else if inside {
                if let Some(v) = line.strip_prefix("THPeligible:") {
                    eligible = Some(v.trim().to_string());
                }
            }
        }
        assert_eq!(eligible.as_deref(), Some("1"), "the mapping at {at:#x} is not eligible for huge pages (mode {mode:?})");
    }
}
