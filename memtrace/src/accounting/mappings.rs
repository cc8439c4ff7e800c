//! Live direct mappings of one process as a set of disjoint page ranges, so that partial `munmap`,
//! `mremap` and `MAP_FIXED` over an existing mapping are exact.
//!
//! Every operation assigns or clears a range, so replaying an event whose effect is already in the
//! set (a mapping that was in `/proc/PID/maps` when the process was first seen) changes nothing.

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Anon,
    File,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    end: u64,
    kind: MapKind,
    /// Attribution site of the call that made the mapping (`u32::MAX` when unknown).
    site: u32,
}

/// A piece of a mapping that was removed: its bytes and who made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    pub bytes: u64,
    pub kind: MapKind,
    pub site: u32,
}

pub const NO_SITE: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub struct Mappings {
    ranges: BTreeMap<u64, Range>,
    page: u64,
    anon_bytes: u64,
    file_bytes: u64,
}

impl Mappings {
    pub fn new(page_size: u64) -> Self {
        Self {
            ranges: BTreeMap::new(),
            page: page_size.max(1),
            anon_bytes: 0,
            file_bytes: 0,
        }
    }

    pub fn anon_bytes(&self) -> u64 {
        self.anon_bytes
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn page_end(&self, start: u64, len: u64) -> u64 {
        let len = len.div_ceil(self.page).saturating_mul(self.page);
        start.saturating_add(len)
    }

    fn counter(&mut self, kind: MapKind) -> &mut u64 {
        match kind {
            MapKind::Anon => &mut self.anon_bytes,
            MapKind::File => &mut self.file_bytes,
        }
    }

    /// The kind and site of the mapping containing `addr`.
    pub fn at(&self, addr: u64) -> Option<(MapKind, u32)> {
        let (_, range) = self.ranges.range(..=addr).next_back()?;
        (range.end > addr).then_some((range.kind, range.site))
    }

    /// Maps `[start, start + len)` (rounded up to whole pages), replacing whatever was there.
    /// Returns the pieces it replaced.
    pub fn insert(&mut self, start: u64, len: u64, kind: MapKind, site: u32) -> Vec<Removed> {
        let end = self.page_end(start, len);
        if end <= start {
            return Vec::new();
        }
        let removed = self.remove_range(start, end);
        self.ranges.insert(start, Range { end, kind, site });
        *self.counter(kind) += end - start;
        removed
    }

    /// Maps the parts of `[start, start + len)` that no known range covers (seeding from
    /// `/proc/PID/maps` keeps what events already said about a range, its call site included).
    pub fn fill(&mut self, start: u64, len: u64, kind: MapKind) {
        let end = self.page_end(start, len);
        let mut known: Vec<(u64, u64)> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, range)| range.end > start)
            .map(|(&s, range)| (s, range.end))
            .collect();
        known.reverse();
        let mut cursor = start;
        for (s, e) in known {
            if s > cursor {
                self.insert(cursor, s - cursor, kind, NO_SITE);
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            self.insert(cursor, end - cursor, kind, NO_SITE);
        }
    }

    /// Unmaps `[start, start + len)` (rounded up to whole pages). Returns the pieces removed.
    pub fn remove(&mut self, start: u64, len: u64) -> Vec<Removed> {
        let end = self.page_end(start, len);
        self.remove_range(start, end)
    }

    fn remove_range(&mut self, start: u64, end: u64) -> Vec<Removed> {
        let mut removed = Vec::new();
        if end <= start {
            return removed;
        }
        // Ranges that start before `end` and end after `start` overlap.
        let overlapping: Vec<(u64, Range)> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, range)| range.end > start)
            .map(|(&s, &r)| (s, r))
            .collect();
        // A range starting before `start` that ends before it is not overlapping, but `take_while`
        // stops at the first such range only if ranges are disjoint and sorted, which they are.
        for (s, range) in overlapping {
            self.ranges.remove(&s);
            let cut_start = s.max(start);
            let cut_end = range.end.min(end);
            let bytes = cut_end - cut_start;
            let counter = self.counter(range.kind);
            *counter = counter.saturating_sub(bytes);
            removed.push(Removed {
                bytes,
                kind: range.kind,
                site: range.site,
            });
            if s < start {
                self.ranges.insert(
                    s,
                    Range {
                        end: start,
                        ..range
                    },
                );
            }
            if range.end > end {
                self.ranges.insert(
                    end,
                    Range {
                        end: range.end,
                        ..range
                    },
                );
            }
        }
        removed
    }

    /// `mremap(old, old_len, new_len, flags, ..) = new`. The new range keeps the kind and site of
    /// the old one (or of what is already at `new` when the old range is unknown). With
    /// `MREMAP_DONTUNMAP` the old range stays mapped. `old_len == 0` duplicates a shared mapping.
    /// Returns the bytes removed and the bytes added.
    pub fn remap(
        &mut self,
        old: u64,
        old_len: u64,
        new: u64,
        new_len: u64,
        keep_old: bool,
    ) -> (Vec<Removed>, u64, MapKind, u32) {
        let (kind, site) = self
            .at(old)
            .or_else(|| self.at(new))
            .unwrap_or((MapKind::Anon, NO_SITE));
        let mut removed = if keep_old || old_len == 0 {
            Vec::new()
        } else {
            self.remove(old, old_len)
        };
        removed.extend(self.insert(new, new_len, kind, site));
        let added = self.page_end(new, new_len).saturating_sub(new);
        (removed, added, kind, site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn total(m: &Mappings) -> u64 {
        m.anon_bytes() + m.file_bytes()
    }

    #[test]
    fn insert_rounds_to_pages() {
        let mut m = Mappings::new(P);
        m.insert(0x10000, 1, MapKind::Anon, 0);
        assert_eq!(m.anon_bytes(), P);
        m.insert(0x20000, 3 * P, MapKind::File, 0);
        assert_eq!(m.file_bytes(), 3 * P);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn partial_unmap_middle_head_tail() {
        let mut m = Mappings::new(P);
        m.insert(0x100000, 10 * P, MapKind::Anon, 3);
        let removed = m.remove(0x100000 + 4 * P, 2 * P);
        assert_eq!(
            removed,
            vec![Removed {
                bytes: 2 * P,
                kind: MapKind::Anon,
                site: 3
            }]
        );
        assert_eq!(m.anon_bytes(), 8 * P);
        assert_eq!(m.len(), 2);
        m.remove(0x100000, P);
        assert_eq!(m.anon_bytes(), 7 * P);
        m.remove(0x100000 + 9 * P, P);
        assert_eq!(m.anon_bytes(), 6 * P);
        // Unmapping a range spanning the hole and both remaining pieces.
        m.remove(0x100000, 10 * P);
        assert_eq!(m.anon_bytes(), 0);
        assert!(m.is_empty());
    }

    #[test]
    fn unmap_unknown_range_changes_nothing() {
        let mut m = Mappings::new(P);
        m.insert(0x100000, P, MapKind::Anon, 0);
        assert!(m.remove(0x200000, 4 * P).is_empty());
        assert_eq!(m.anon_bytes(), P);
    }

    #[test]
    fn fixed_mapping_replaces_overlap() {
        let mut m = Mappings::new(P);
        m.insert(0x100000, 4 * P, MapKind::Anon, 0);
        m.insert(0x100000 + P, 2 * P, MapKind::File, 1);
        assert_eq!(m.anon_bytes(), 2 * P);
        assert_eq!(m.file_bytes(), 2 * P);
        assert_eq!(m.len(), 3);
        assert_eq!(m.at(0x100000 + P), Some((MapKind::File, 1)));
    }

    #[test]
    fn replay_is_idempotent() {
        let mut m = Mappings::new(P);
        m.insert(0x100000, 4 * P, MapKind::Anon, 0);
        m.insert(0x100000, 4 * P, MapKind::Anon, 0);
        assert_eq!(m.anon_bytes(), 4 * P);
        m.remove(0x100000, P);
        m.remove(0x100000, P);
        assert_eq!(m.anon_bytes(), 3 * P);
    }

    #[test]
    fn remap_grow_move_shrink() {
        let mut m = Mappings::new(P);
        m.insert(0x100000, 2 * P, MapKind::File, 5);
        // Grow and move.
        let (removed, added, kind, site) = m.remap(0x100000, 2 * P, 0x900000, 5 * P, false);
        assert_eq!(removed.iter().map(|r| r.bytes).sum::<u64>(), 2 * P);
        assert_eq!((added, kind, site), (5 * P, MapKind::File, 5));
        assert_eq!(m.file_bytes(), 5 * P);
        assert_eq!(m.at(0x100000), None);
        // Shrink in place.
        m.remap(0x900000, 5 * P, 0x900000, P, false);
        assert_eq!(m.file_bytes(), P);
        assert_eq!(total(&m), P);
        // MREMAP_DONTUNMAP keeps the old range.
        m.remap(0x900000, P, 0xa00000, P, true);
        assert_eq!(m.file_bytes(), 2 * P);
    }

    #[test]
    fn fill_keeps_known_ranges() {
        let mut m = Mappings::new(P);
        m.insert(0x100000 + P, P, MapKind::Anon, 7);
        m.fill(0x100000, 4 * P, MapKind::Anon);
        assert_eq!(m.anon_bytes(), 4 * P);
        assert_eq!(
            m.at(0x100000 + P),
            Some((MapKind::Anon, 7)),
            "the known site stays"
        );
        assert_eq!(m.at(0x100000), Some((MapKind::Anon, NO_SITE)));
        assert_eq!(m.at(0x100000 + 3 * P), Some((MapKind::Anon, NO_SITE)));
        m.fill(0x100000, 4 * P, MapKind::Anon);
        assert_eq!(m.anon_bytes(), 4 * P, "idempotent");
    }

    #[test]
    fn remap_of_unknown_range_is_anon() {
        let mut m = Mappings::new(P);
        m.remap(0x100000, P, 0x200000, 2 * P, false);
        assert_eq!(m.anon_bytes(), 2 * P);
    }
}
