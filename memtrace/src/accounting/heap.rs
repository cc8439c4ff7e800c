//! Live heap allocations of one process, from malloc-family events. Sizes are the requested sizes.

use rustc_hash::FxHashMap as HashMap;

/// One live allocation. Kept small: a traced process can hold millions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAlloc {
    pub size: u64,
    /// Attribution site (index into the process's sites).
    pub site: u32,
    /// When it was made, in seconds of the kernel's monotonic clock.
    pub born_s: u32,
}

/// Live allocations packed into one `u64` each (16 bytes a table slot with the address, against 24
/// unpacked: a million live blocks take about 34 MB instead of 50, with a smaller peak when the
/// table grows): size in the low 24 bits, site in the next 16, birth (seconds after the first
/// allocation seen) in the high 24. Blocks that do not fit (16 MiB and more, site ids past 65535,
/// births after 194 days) go to a second map, unpacked.
const SIZE_BITS: u32 = 24;
const SITE_BITS: u32 = 16;
const BORN_BITS: u32 = 24;

#[derive(Clone, Debug, Default)]
pub struct Heap {
    live: HashMap<u64, u64>,
    big: HashMap<u64, LiveAlloc>,
    /// Birth second that packed births count from.
    base_s: Option<u32>,
    pub live_bytes: u64,
    pub peak_bytes: u64,
    pub total_allocs: u64,
    pub total_frees: u64,
    pub total_reallocs: u64,
    /// Frees (and reallocs) of pointers never seen allocated: made before tracing started.
    pub unknown_frees: u64,
    /// Allocations returned at an address still live here (a free was missed); the old one is
    /// replaced.
    pub replaced: u64,
    /// `calloc` calls whose size overflowed (they fail; counted, not accounted).
    pub calloc_overflows: u64,
}

/// What an operation did to live bytes, so the caller can update per-site figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Option<LiveAlloc>,
    pub removed: Option<LiveAlloc>,
}

impl Heap {
    pub fn live_count(&self) -> u64 {
        (self.live.len() + self.big.len()) as u64
    }

    fn pack(&mut self, alloc: LiveAlloc) -> Option<u64> {
        let base = *self.base_s.get_or_insert(alloc.born_s);
        let born = alloc.born_s.saturating_sub(base);
        (alloc.size < 1 << SIZE_BITS && alloc.site < 1 << SITE_BITS && born < 1 << BORN_BITS).then(
            || {
                alloc.size
                    | u64::from(alloc.site) << SIZE_BITS
                    | u64::from(born) << (SIZE_BITS + SITE_BITS)
            },
        )
    }

    fn unpack(&self, packed: u64) -> LiveAlloc {
        let mask = |bits: u32| (1u64 << bits) - 1;
        LiveAlloc {
            size: packed & mask(SIZE_BITS),
            site: ((packed >> SIZE_BITS) & mask(SITE_BITS)) as u32,
            born_s: self
                .base_s
                .unwrap_or(0)
                .saturating_add(((packed >> (SIZE_BITS + SITE_BITS)) & mask(BORN_BITS)) as u32),
        }
    }

    /// Every live allocation: address and block.
    pub fn iter(&self) -> impl Iterator<Item = (u64, LiveAlloc)> + '_ {
        self.live
            .iter()
            .map(|(&addr, &packed)| (addr, self.unpack(packed)))
            .chain(self.big.iter().map(|(&addr, &alloc)| (addr, alloc)))
    }

    fn remove(&mut self, addr: u64) -> Option<LiveAlloc> {
        match self.live.remove(&addr) {
            Some(packed) => Some(self.unpack(packed)),
            None => self.big.remove(&addr),
        }
    }

    fn insert(&mut self, addr: u64, alloc: LiveAlloc) -> Option<LiveAlloc> {
        let replaced = self.remove(addr);
        match self.pack(alloc) {
            Some(packed) => {
                self.live.insert(addr, packed);
            }
            None => {
                self.big.insert(addr, alloc);
            }
        }
        if let Some(old) = replaced {
            self.live_bytes = self.live_bytes.saturating_sub(old.size);
            self.replaced += 1;
        }
        self.live_bytes = self.live_bytes.saturating_add(alloc.size);
        self.peak_bytes = self.peak_bytes.max(self.live_bytes);
        replaced
    }

    fn take(&mut self, addr: u64) -> Option<LiveAlloc> {
        let removed = self.remove(addr);
        match removed {
            Some(alloc) => self.live_bytes = self.live_bytes.saturating_sub(alloc.size),
            None => self.unknown_frees += 1,
        }
        removed
    }

    /// `malloc`, `aligned_alloc`, `memalign`, `posix_memalign`, `valloc`, `pvalloc` returned `addr`.
    pub fn alloc(&mut self, addr: u64, alloc: LiveAlloc) -> Change {
        if addr == 0 {
            return Change::default();
        }
        self.total_allocs += 1;
        Change {
            removed: self.insert(addr, alloc),
            added: Some(alloc),
        }
    }

    /// `calloc(nmemb, elem)` returned `addr`; the size is checked for overflow.
    pub fn calloc(&mut self, addr: u64, nmemb: u64, elem: u64, site: u32, born_s: u32) -> Change {
        match nmemb.checked_mul(elem) {
            Some(size) => self.alloc(addr, LiveAlloc { size, site, born_s }),
            None => {
                self.calloc_overflows += 1;
                Change::default()
            }
        }
    }

    /// `free(addr)`: an unknown pointer is counted, not subtracted.
    pub fn free(&mut self, addr: u64) -> Change {
        self.total_frees += 1;
        Change {
            removed: self.take(addr),
            added: None,
        }
    }

    /// `realloc(old, size)` returned `new`: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)`
    /// frees `p` (glibc returns NULL); a NULL result for a non-zero size is a failure that leaves
    /// `p` live; otherwise `p` is gone and `new` holds `size` bytes (grown, shrunk or moved).
    pub fn realloc(&mut self, old: u64, new: u64, alloc: LiveAlloc) -> Change {
        if old == 0 {
            return self.alloc(new, alloc);
        }
        if alloc.size == 0 {
            let mut change = self.free(old);
            if new != 0 {
                // An allocator may return a minimal chunk for realloc(p, 0).
                change.added = Some(alloc);
                self.insert(new, alloc);
                self.total_allocs += 1;
            }
            return change;
        }
        if new == 0 {
            return Change::default();
        }
        self.total_reallocs += 1;
        let removed = self.take(old);
        self.insert(new, alloc);
        Change {
            removed,
            added: Some(alloc),
        }
    }

    /// Allocations still live that were made at or before `before_s`.
    pub fn older_than(&self, before_s: u32) -> impl Iterator<Item = (u64, LiveAlloc)> + '_ {
        self.iter()
            .filter(move |(_, alloc)| alloc.born_s <= before_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(size: u64) -> LiveAlloc {
        LiveAlloc {
            size,
            site: 0,
            born_s: 0,
        }
    }

    #[test]
    fn malloc_free_counts() {
        let mut heap = Heap::default();
        for i in 0..10 {
            heap.alloc(0x1000 + i * 0x100, a(64));
        }
        for i in 0..4 {
            heap.free(0x1000 + i * 0x100);
        }
        assert_eq!(heap.live_bytes, 6 * 64);
        assert_eq!(heap.live_count(), 6);
        assert_eq!(heap.peak_bytes, 10 * 64);
        assert_eq!(
            (heap.total_allocs, heap.total_frees, heap.unknown_frees),
            (10, 4, 0)
        );
    }

    #[test]
    fn unknown_free_is_counted_not_subtracted() {
        let mut heap = Heap::default();
        heap.alloc(0x1000, a(100));
        heap.free(0x9999);
        assert_eq!(heap.live_bytes, 100);
        assert_eq!(heap.unknown_frees, 1);
    }

    #[test]
    fn calloc_overflow() {
        let mut heap = Heap::default();
        heap.calloc(0x1000, 10, 12, 0, 0);
        assert_eq!(heap.live_bytes, 120);
        heap.calloc(0x2000, u64::MAX, 2, 0, 0);
        assert_eq!(heap.live_bytes, 120);
        assert_eq!(heap.calloc_overflows, 1);
    }

    #[test]
    fn realloc_cases() {
        let mut heap = Heap::default();
        // realloc(NULL, 100) is malloc.
        heap.realloc(0, 0x1000, a(100));
        assert_eq!((heap.live_bytes, heap.live_count()), (100, 1));
        // Grow in place.
        heap.realloc(0x1000, 0x1000, a(300));
        assert_eq!((heap.live_bytes, heap.live_count()), (300, 1));
        // Shrink and move.
        heap.realloc(0x1000, 0x2000, a(50));
        assert_eq!((heap.live_bytes, heap.live_count()), (50, 1));
        // Failure leaves the block live.
        heap.realloc(0x2000, 0, a(1 << 40));
        assert_eq!((heap.live_bytes, heap.live_count()), (50, 1));
        // realloc(p, 0) frees.
        heap.realloc(0x2000, 0, a(0));
        assert_eq!((heap.live_bytes, heap.live_count()), (0, 0));
        assert_eq!(heap.peak_bytes, 300);
        // realloc of an unknown pointer counts it unknown and accounts the new block.
        heap.realloc(0x7000, 0x8000, a(10));
        assert_eq!((heap.live_bytes, heap.unknown_frees), (10, 1));
    }

    #[test]
    fn packed_and_big_blocks_round_trip() {
        let mut heap = Heap::default();
        let small = LiveAlloc {
            size: 100,
            site: 7,
            born_s: 1000,
        };
        let big = LiveAlloc {
            size: 64 << 20,
            site: 3,
            born_s: 1005,
        };
        let far_site = LiveAlloc {
            size: 10,
            site: 70_000,
            born_s: 1010,
        };
        heap.alloc(0x1000, small);
        heap.alloc(0x2000, big);
        heap.alloc(0x3000, far_site);
        let mut all: Vec<(u64, LiveAlloc)> = heap.iter().collect();
        all.sort_by_key(|(addr, _)| *addr);
        assert_eq!(
            all,
            vec![(0x1000, small), (0x2000, big), (0x3000, far_site)]
        );
        assert_eq!(heap.live_bytes, 100 + (64 << 20) + 10);
        assert_eq!(heap.older_than(1005).count(), 2);
        assert_eq!(heap.free(0x2000).removed, Some(big));
        assert_eq!(heap.free(0x1000).removed, Some(small));
        assert_eq!((heap.live_count(), heap.live_bytes), (1, 10));
    }

    #[test]
    fn replaced_live_address() {
        let mut heap = Heap::default();
        heap.alloc(0x1000, a(10));
        heap.alloc(0x1000, a(20));
        assert_eq!(
            (heap.live_bytes, heap.replaced, heap.live_count()),
            (20, 1, 1)
        );
    }
}
