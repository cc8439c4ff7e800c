//! Who in a process asked for its memory: call sites become symbolized stacks, each site is
//! attributed to the library of its first frame outside the allocator, and sites with the same
//! attributed function form a *consumer* (the origin monitor's consumer shape), rolled up per
//! library. Also the leak view: allocations still live after an age, grouped by consumer.
//!
//! Frames of a site are the allocator's immediate caller (the return address read at the stack
//! pointer on entry, right even without frame pointers) followed by the frame-pointer stack above
//! it. Return addresses are symbolized at `addr - 1` so that a call at the end of a function is
//! named after that function.

pub mod symbols;

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};

use self::symbols::{Blazesym, Frame, Symbolizer};
use crate::{
    accounting::{modules::Modules, ProcessState, SiteClass, SiteKey, SiteStats},
    config::TrackingConfig,
    snapshot::LibrarySnapshot,
};

/// Where stacks come from: the kernel's stack map in the agent, a table in tests.
pub trait StackSource {
    /// Instruction pointers of a stack id, innermost first.
    fn frames(&mut self, stack_id: i64) -> Option<Vec<u64>>;
}

impl StackSource for HashMap<i64, Vec<u64>> {
    fn frames(&mut self, stack_id: i64) -> Option<Vec<u64>> {
        self.get(&stack_id).cloned()
    }
}

/// Objects that are "the allocator": frames in them are never the consumer.
fn is_allocator_module(module: &str) -> bool {
    module.starts_with("libc.so")
        || (module.starts_with("libc-") && module.ends_with(".so"))
        || module.starts_with("ld-linux")
}

/// Functions that only pass an allocation through: C++ `operator new`/`new[]` (mangled or not)
/// and the malloc family itself (in a statically linked allocator).
fn is_allocation_wrapper(function: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "operator new",
        "_Znw",
        "_Zna",
        "__libc_malloc",
        "__libc_calloc",
        "__libc_realloc",
    ];
    const NAMES: [&str; 10] = [
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "reallocarray",
    ];
    PREFIXES.iter().any(|p| function.starts_with(p)) || NAMES.contains(&function)
}

/// Allocation wrappers of common runtimes and libraries, skipped like the configured ones (exact
/// names, or prefixes ending in `*`):
/// - CPython's allocator API: `PyMem_*`, `_PyMem_*`, `PyObject_Malloc`/`Calloc`/`Realloc`/`Free`
///   and their `_PyObject_*` implementations, `pymalloc_*`, `_PyObject_New*`/`_PyObject_GC_*`
///   allocation entry points;
/// - GLib: `g_malloc*`, `g_try_malloc*`, `g_realloc*`, `g_try_realloc*`, `g_new*` helpers,
///   `g_slice_alloc*`, `g_memdup*`, `g_strdup*`;
/// - the `xmalloc` family of GNU programs: `xmalloc`, `xcalloc`, `xrealloc`, `xzalloc`,
///   `xmemdup`, `xstrdup`, `ximalloc`, `xicalloc`, `xcharalloc`, `xnmalloc`, `x2realloc`,
///   `x2nrealloc`, `xireallocarray`, `xreallocarray`;
/// - `strdup`-style copies outside libc: `strdup`, `strndup`.
pub const BUILTIN_WRAPPERS: &[&str] = &[
    "PyMem_*",
    "_PyMem_*",
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "PyObject_Free",
    "_PyObject_Malloc",
    "_PyObject_Calloc",
    "_PyObject_Realloc",
    "pymalloc_*",
    "_PyObject_New*",
    "_PyObject_GC_New*",
    "_PyObject_GC_Link",
    "gc_alloc",
    "g_malloc*",
    "g_try_malloc*",
    "g_realloc*",
    "g_try_realloc*",
    "g_slice_alloc*",
    "g_memdup*",
    "g_strdup*",
    "g_strndup",
    "xmalloc",
    "xcalloc",
    "xrealloc",
    "xzalloc",
    "xmemdup",
    "xstrdup",
    "ximalloc",
    "xicalloc",
    "xcharalloc",
    "xnmalloc",
    "x2realloc",
    "x2nrealloc",
    "xireallocarray",
    "xreallocarray",
    "strdup",
    "strndup",
];

fn is_builtin_wrapper(function: &str) -> bool {
    BUILTIN_WRAPPERS.iter().any(|w| match w.strip_suffix('*') {
        Some(prefix) => function.starts_with(prefix),
        None => *w == function,
    })
}

/// Index of the frame a site is attributed to: the first outside the allocator, libstdc++'s
/// `operator new`, the built-in wrappers ([`BUILTIN_WRAPPERS`]) and the configured ones; the
/// immediate caller when every frame is skipped.
pub fn attributed_frame(frames: &[Frame], wrappers: &[String]) -> usize {
    frames
        .iter()
        .position(|frame| {
            let function = frame.function.as_deref().unwrap_or("");
            !(is_allocator_module(&frame.module)
                || is_allocation_wrapper(function)
                || (frame.module.starts_with("libstdc++") && function.starts_with("operator new"))
                || is_builtin_wrapper(function)
                || wrappers.iter().any(|w| w == function))
        })
        .unwrap_or(0)
}

/// One consumer, with the origin monitor's fields.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// `type:library:function`, stable across snapshots.
    pub id: String,
    /// Function of the attributed frame (or `library+0xoffset`).
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SiteClass,
    /// The library (mapped object) the memory is attributed to.
    pub category: String,
    /// Live bytes.
    pub allocated_memory: u64,
    pub peak_memory: u64,
    pub total_calls: u64,
    pub active_allocations: u64,
    pub average_size: u64,
    /// Symbolized frames of the consumer's largest site, attributed frame first.
    pub stack_trace: Vec<String>,
    pub metadata: ConsumerMetadata,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerMetadata {
    pub operation: String,
    /// Call sites (distinct stacks) merged into this consumer.
    pub sites: usize,
    /// Live bytes at or above `suspiciousSize`.
    pub suspicious: bool,
    /// Live bytes at or above `maxConsumerSize`.
    pub over_limit: bool,
    /// Frames skipped as allocator internals or wrappers before the attributed one.
    pub skipped_frames: usize,
    /// A mapping or break growth made by the allocator itself (libc) in a process whose heap is
    /// traced: it backs heap blocks already counted at their callers, so library roll-ups leave it
    /// out.
    #[serde(default)]
    pub allocator_internal: bool,
}

/// Allocations still live after the leak age, grouped by consumer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeakGroup {
    pub consumer_id: String,
    pub name: String,
    pub library: String,
    pub bytes: u64,
    pub count: u64,
    pub oldest_age_seconds: u64,
    pub stack_trace: Vec<String>,
}

/// Everything attribution says about one process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerReport {
    pub pid: u32,
    pub comm: String,
    pub libraries: Vec<LibrarySnapshot>,
    pub consumers: Vec<Consumer>,
    /// Consumers beyond `maxConsumers` (smallest live bytes first), and their live bytes.
    pub evicted_consumers: u64,
    pub evicted_bytes: u64,
    /// Call sites beyond the accounting's site limit, merged into one overflow site.
    pub overflowed_sites: u64,
    pub leaks: Vec<LeakGroup>,
    /// Every call site that allocated since tracing began (live memory or not) and its whole
    /// symbolized stack (for flame graphs and profiles; not part of the JSON).
    #[serde(skip)]
    pub sites: Vec<SiteLive>,
}

impl ConsumerReport {
    /// The `n` largest consumers that asked for memory themselves: the allocator's own mappings
    /// (`metadata.allocatorInternal`) back heap blocks and are left out.
    pub fn top_consumers(&self, n: usize) -> Vec<&Consumer> {
        self.consumers
            .iter()
            .filter(|c| !c.metadata.allocator_internal)
            .take(n)
            .collect()
    }
}

/// Live memory of one call site with its whole stack, innermost frame first.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteLive {
    pub kind: SiteClass,
    pub frames: Vec<Frame>,
    /// Bytes and allocations of this site still live.
    pub live_bytes: u64,
    pub live_count: u64,
    /// Index in `frames` of the frame the site is attributed to: the ones before it are the
    /// allocator and its wrappers (0 when there are none, or no frames).
    pub attributed: usize,
    /// The consumer's name: the attributed frame's function, or `[unknown]`/`[overflow]` for a
    /// site without frames.
    pub consumer: String,
    /// Allocations and bytes made by this site since tracing began, freed or not.
    pub total_calls: u64,
    pub total_bytes: u64,
    /// A mapping or break growth made by the allocator itself in a process whose heap is traced
    /// (see [`ConsumerMetadata::allocator_internal`]).
    pub allocator_internal: bool,
}

/// What attribution needs of one process: a copy of its call sites and a summary of its old live
/// allocations, taken from the accounting at one instant. Symbolizing it takes file I/O and may be
/// slow; working on a copy keeps that away from event intake.
#[derive(Clone, Debug, Default)]
pub struct AttributionInput {
    pub pid: u32,
    /// Start time of the process (clock ticks after boot): with the pid, identifies it.
    pub start_time: u64,
    pub comm: String,
    pub heap_traced: bool,
    /// Call sites that ever allocated, with their figures.
    pub sites: Vec<(u32, SiteStats)>,
    pub overflowed_sites: u64,
    /// The mapped objects the stacks are symbolized against.
    pub modules: Arc<Modules>,
    /// Live heap allocations born before the leak cutoff, per site.
    pub old_allocations: Vec<OldAllocations>,
}

/// Live heap allocations of one site born before the leak cutoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OldAllocations {
    pub site: u32,
    pub bytes: u64,
    pub count: u64,
    /// Birth of the oldest, kernel monotonic seconds.
    pub oldest_born_s: u32,
}

impl AttributionInput {
    /// A copy of what attribution needs of `state`; allocations born before `leak_cutoff_s`
    /// (kernel monotonic seconds) are summed per site for the leak view.
    pub fn of(state: &ProcessState, leak_cutoff_s: u64) -> Self {
        let mut old: HashMap<u32, OldAllocations> = HashMap::new();
        let cutoff = u32::try_from(leak_cutoff_s).unwrap_or(u32::MAX);
        for (_, alloc) in state.heap.older_than(cutoff) {
            let entry = old.entry(alloc.site).or_insert(OldAllocations {
                site: alloc.site,
                bytes: 0,
                count: 0,
                oldest_born_s: alloc.born_s,
            });
            entry.bytes += alloc.size;
            entry.count += 1;
            entry.oldest_born_s = entry.oldest_born_s.min(alloc.born_s);
        }
        let mut old_allocations: Vec<OldAllocations> = old.into_values().collect();
        old_allocations.sort_by_key(|o| o.site);
        Self {
            pid: state.pid,
            start_time: state.start_time,
            comm: state.comm.clone(),
            heap_traced: state.heap_traced,
            sites: state
                .sites
                .iter()
                .filter(|(_, s)| s.total_calls > 0 || s.live_bytes > 0)
                .map(|(id, s)| (id, *s))
                .collect(),
            overflowed_sites: state.sites.overflowed,
            modules: Arc::clone(&state.modules),
            old_allocations,
        }
    }
}

/// Where a site was attributed.
#[derive(Clone, Debug)]
struct Attributed {
    consumer_id: String,
    name: String,
    library: String,
    skipped: usize,
    stack: Vec<String>,
    frames: Vec<Frame>,
}

/// Symbolizer, caches and peaks across reports.
#[derive(Default)]
pub struct Attributor {
    pub symbolizer: Symbolizer,
    pub config: TrackingConfig,
    /// Attribution of each site, by (pid, process start time, site key).
    sites: HashMap<(u32, u64, SiteKey), Attributed>,
    /// Highest live bytes seen per consumer, by (pid, start time, consumer id).
    peaks: HashMap<(u32, u64, String), u64>,
    stacks: HashMap<i64, Vec<u64>>,
}

impl Attributor {
    pub fn new(config: TrackingConfig) -> Self {
        let mut symbolizer = Symbolizer::new();
        symbolizer.debug_dirs = config.debug_dirs.clone();
        Self {
            config,
            symbolizer,
            ..Self::default()
        }
    }

    fn attribute_site(
        &mut self,
        inner: &Blazesym,
        state: &AttributionInput,
        key: SiteKey,
        stacks: &mut dyn StackSource,
    ) -> Attributed {
        let cache_key = (state.pid, state.start_time, key);
        if let Some(found) = self.sites.get(&cache_key) {
            return found.clone();
        }
        let mut addrs = Vec::new();
        if key.caller != 0 {
            addrs.push(key.caller);
        }
        if key.stack_id >= 0 {
            let frames = match self.stacks.get(&key.stack_id) {
                Some(frames) => Some(frames.clone()),
                None => {
                    let frames = stacks.frames(key.stack_id);
                    if let Some(frames) = &frames {
                        self.stacks.insert(key.stack_id, frames.clone());
                    }
                    frames
                }
            };
            if let Some(frames) = frames {
                // The first entry is the instruction pointer inside the allocator (or the syscall
                // wrapper); the caller read at the stack pointer replaces it. The unwinder's next
                // frame is that same caller when the first frame could be unwound: kept once.
                let skip = usize::from(key.caller != 0);
                let mut rest = frames.into_iter().skip(skip).filter(|&a| a != 0).peekable();
                if key.caller != 0 && rest.peek() == Some(&key.caller) {
                    rest.next();
                }
                addrs.extend(rest);
            }
        }
        let depth = (self.config.stack_trace_depth as usize).max(1);
        // One frame per function: an address in inlined code gives the inlined ones first.
        let frames: Vec<Frame> = addrs
            .iter()
            .take(depth + 8)
            .flat_map(|&addr| {
                let mut frames =
                    self.symbolizer
                        .frames(inner, &state.modules, addr.saturating_sub(1));
                for frame in &mut frames {
                    frame.addr = addr;
                }
                frames
            })
            .collect();
        let attributed = if frames.is_empty() {
            let unknown = if key.stack_id == -2 {
                "[overflow]"
            } else {
                "[unknown]"
            };
            Attributed {
                consumer_id: format!("{}:{unknown}:{unknown}", key.class.as_str()),
                name: unknown.into(),
                library: unknown.into(),
                skipped: 0,
                stack: Vec::new(),
                frames: Vec::new(),
            }
        } else {
            let index = attributed_frame(&frames, &self.config.wrappers);
            let frame = &frames[index];
            Attributed {
                consumer_id: format!("{}:{}:{}", key.class.as_str(), frame.module, frame.name()),
                name: frame.name(),
                library: frame.module.clone(),
                skipped: index,
                stack: frames
                    .iter()
                    .skip(index)
                    .take(depth)
                    .map(Frame::display)
                    .collect(),
                frames: frames.clone(),
            }
        };
        self.sites.insert(cache_key, attributed.clone());
        attributed
    }

    /// Consumers, library roll-ups and the leak view of one process. `now_s` is the kernel's
    /// monotonic clock in seconds (the clock of allocation timestamps).
    pub fn report(
        &mut self,
        state: &AttributionInput,
        stacks: &mut dyn StackSource,
        now_s: u64,
    ) -> ConsumerReport {
        let mut consumers: HashMap<String, Consumer> = HashMap::new();
        // The consumer's stack is its site holding the most live bytes; of sites holding as much
        // (none, in a process that freed everything before it exited), the one that held most.
        let mut largest_site: HashMap<String, (u64, u64)> = HashMap::new();
        let mut site_consumer: HashMap<u32, (String, String, String, Vec<String>)> = HashMap::new();
        let inner = symbols::blazesym(&self.symbolizer.debug_dirs);
        let mut sites = Vec::new();
        for &(site_id, ref stats) in &state.sites {
            let attributed = self.attribute_site(&inner, state, stats.key, stacks);
            let allocator_internal = state.heap_traced
                && stats.key.class != SiteClass::Malloc
                && attributed.library.starts_with("libc");
            sites.push(SiteLive {
                kind: stats.key.class,
                frames: attributed.frames.clone(),
                live_bytes: stats.live_bytes,
                live_count: stats.live_count,
                attributed: attributed.skipped,
                consumer: attributed.name.clone(),
                total_calls: stats.total_calls,
                total_bytes: stats.total_bytes,
                allocator_internal,
            });
            site_consumer.insert(
                site_id,
                (
                    attributed.consumer_id.clone(),
                    attributed.name.clone(),
                    attributed.library.clone(),
                    attributed.stack.clone(),
                ),
            );
            let consumer = consumers
                .entry(attributed.consumer_id.clone())
                .or_insert_with(|| Consumer {
                    id: attributed.consumer_id.clone(),
                    name: attributed.name.clone(),
                    kind: stats.key.class,
                    category: attributed.library.clone(),
                    allocated_memory: 0,
                    peak_memory: 0,
                    total_calls: 0,
                    active_allocations: 0,
                    average_size: 0,
                    stack_trace: Vec::new(),
                    metadata: ConsumerMetadata {
                        operation: attributed.name.clone(),
                        sites: 0,
                        suspicious: false,
                        over_limit: false,
                        skipped_frames: attributed.skipped,
                        allocator_internal,
                    },
                });
            consumer.allocated_memory += stats.live_bytes;
            consumer.total_calls += stats.total_calls;
            consumer.active_allocations += stats.live_count;
            consumer.average_size += stats.total_bytes; // divided below
            consumer.peak_memory = consumer.peak_memory.max(stats.peak_bytes);
            consumer.metadata.sites += 1;
            let largest = largest_site
                .entry(attributed.consumer_id.clone())
                .or_insert((0, 0));
            let size = (stats.live_bytes, stats.peak_bytes);
            if consumer.stack_trace.is_empty() || size > *largest {
                *largest = size;
                consumer.stack_trace = attributed.stack.clone();
            }
        }
        let mut consumers: Vec<Consumer> = consumers
            .into_values()
            .map(|mut c| {
                c.average_size = c.average_size.checked_div(c.total_calls).unwrap_or(0);
                let peak = self
                    .peaks
                    .entry((state.pid, state.start_time, c.id.clone()))
                    .or_insert(0);
                *peak = (*peak).max(c.allocated_memory).max(c.peak_memory);
                c.peak_memory = *peak;
                c.metadata.suspicious = c.allocated_memory >= self.config.suspicious_size;
                c.metadata.over_limit = c.allocated_memory >= self.config.max_consumer_size;
                c
            })
            .collect();
        consumers.sort_by(|a, b| {
            b.allocated_memory
                .cmp(&a.allocated_memory)
                .then(b.total_calls.cmp(&a.total_calls))
                .then(a.id.cmp(&b.id))
        });

        // Library roll-ups over every consumer, before eviction.
        let mut libraries: HashMap<String, LibrarySnapshot> = HashMap::new();
        for c in consumers.iter().filter(|c| !c.metadata.allocator_internal) {
            let lib = libraries
                .entry(c.category.clone())
                .or_insert_with(|| LibrarySnapshot {
                    library: c.category.clone(),
                    ..Default::default()
                });
            lib.live_bytes += c.allocated_memory;
            lib.peak_bytes += c.peak_memory;
            lib.calls += c.total_calls;
        }
        let mut libraries: Vec<LibrarySnapshot> = libraries.into_values().collect();
        libraries.sort_by(|a, b| {
            b.live_bytes
                .cmp(&a.live_bytes)
                .then(a.library.cmp(&b.library))
        });

        let max = (self.config.max_consumers as usize).max(1);
        let (evicted_consumers, evicted_bytes) = if consumers.len() > max {
            let evicted = consumers.split_off(max);
            (
                evicted.len() as u64,
                evicted.iter().map(|c| c.allocated_memory).sum(),
            )
        } else {
            (0, 0)
        };

        // Leak view: live heap allocations older than the leak age, by consumer.
        let mut leaks: HashMap<String, LeakGroup> = HashMap::new();
        for old in &state.old_allocations {
            let Some((id, name, library, stack)) = site_consumer.get(&old.site) else {
                continue;
            };
            let group = leaks.entry(id.clone()).or_insert_with(|| LeakGroup {
                consumer_id: id.clone(),
                name: name.clone(),
                library: library.clone(),
                bytes: 0,
                count: 0,
                oldest_age_seconds: 0,
                stack_trace: stack.clone(),
            });
            group.bytes += old.bytes;
            group.count += old.count;
            group.oldest_age_seconds = group
                .oldest_age_seconds
                .max(now_s.saturating_sub(u64::from(old.oldest_born_s)));
        }
        let mut leaks: Vec<LeakGroup> = leaks.into_values().collect();
        leaks.sort_by(|a, b| {
            b.oldest_age_seconds
                .cmp(&a.oldest_age_seconds)
                .then(b.bytes.cmp(&a.bytes))
        });
        leaks.truncate(self.config.leak_top);

        ConsumerReport {
            pid: state.pid,
            comm: state.comm.clone(),
            libraries,
            consumers,
            evicted_consumers,
            evicted_bytes,
            overflowed_sites: state.overflowed_sites,
            leaks,
            sites,
        }
    }

    /// Forgets what was cached about a process that is gone.
    pub fn forget(&mut self, pid: u32) {
        self.symbolizer.forget(pid);
        self.sites.retain(|(p, _, _), _| *p != pid);
        self.peaks.retain(|(p, _, _), _| *p != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(module: &str, function: &str) -> Frame {
        Frame {
            module: module.into(),
            function: Some(function.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn skips_allocator_and_operator_new() {
        let frames = [
            frame("libstdc++.so.6", "operator new(unsigned long)"),
            frame("libapp.so", "Cache::insert"),
            frame("app", "main"),
        ];
        assert_eq!(attributed_frame(&frames, &[]), 1);
        let frames = [
            frame("libc.so.6", "strdup"),
            frame("libfoo.so", "foo_copy"),
            frame("app", "main"),
        ];
        assert_eq!(attributed_frame(&frames, &[]), 1);
        let frames = [frame("libstdc++.so.6", "_Znwm"), frame("app", "main")];
        assert_eq!(attributed_frame(&frames, &[]), 1);
    }

    #[test]
    fn configured_wrappers_are_skipped() {
        let frames = [
            frame("libapp.so", "app_alloc"),
            frame("libgtk.so", "gtk_widget_new"),
        ];
        assert_eq!(attributed_frame(&frames, &[]), 0);
        assert_eq!(attributed_frame(&frames, &["app_alloc".to_string()]), 1);
    }

    #[test]
    fn builtin_wrappers_are_skipped() {
        let frames = [
            frame("libglib-2.0.so.0", "g_malloc0_n"),
            frame("libgtk.so", "gtk_widget_new"),
        ];
        assert_eq!(attributed_frame(&frames, &[]), 1);
        let frames = [
            frame("python3.11", "_PyObject_Malloc"),
            frame("python3.11", "PyObject_Malloc"),
            frame("python3.11", "PyMem_Realloc"),
            frame("python3.11", "PyByteArray_Resize"),
        ];
        assert_eq!(attributed_frame(&frames, &[]), 3);
        let frames = [frame("sort", "xmalloc"), frame("sort", "sort_buffer")];
        assert_eq!(attributed_frame(&frames, &[]), 1);
        // A prefix matches only where the list says so.
        let frames = [frame("app", "xmallocator"), frame("app", "main")];
        assert_eq!(attributed_frame(&frames, &[]), 0);
    }

    #[test]
    fn falls_back_to_the_immediate_caller() {
        let frames = [frame("libc.so.6", "fopen"), frame("libc.so.6", "something")];
        assert_eq!(attributed_frame(&frames, &[]), 0);
        assert_eq!(attributed_frame(&[], &[]), 0);
    }

    struct Stacks(HashMap<i64, Vec<u64>>);

    impl StackSource for Stacks {
        fn frames(&mut self, stack_id: i64) -> Option<Vec<u64>> {
            self.0.get(&stack_id).cloned()
        }
    }

    /// Two stacks through one caller: the consumer shows the one holding more, and when neither
    /// holds anything (the process freed all before it exited), the one that held more.
    #[test]
    fn a_consumers_stack_is_its_largest_site() {
        let site = |id: u32, stack_id: i64, live: u64, peak: u64| {
            (
                id,
                SiteStats {
                    key: SiteKey {
                        class: SiteClass::Malloc,
                        stack_id,
                        caller: 0x1000,
                    },
                    live_bytes: live,
                    live_count: u64::from(live > 0),
                    peak_bytes: peak,
                    total_calls: 1,
                    total_bytes: peak,
                },
            )
        };
        let mut stacks = Stacks(HashMap::from([
            (1, vec![0x10, 0x1000, 0x2000]),
            (2, vec![0x10, 0x1000, 0x3000]),
        ]));
        let input = |sites| AttributionInput {
            pid: 0,
            start_time: 0,
            comm: "t".into(),
            heap_traced: true,
            sites,
            overflowed_sites: 0,
            modules: Arc::new(Modules::default()),
            old_allocations: Vec::new(),
        };
        let outer = |report: &ConsumerReport| {
            assert_eq!(report.consumers.len(), 1, "{:?}", report.consumers);
            report.consumers[0].stack_trace[1].clone()
        };
        let mut attributor = Attributor::new(TrackingConfig::default());
        let held = attributor.report(
            &input(vec![site(0, 1, 0, 4096), site(1, 2, 64, 64)]),
            &mut stacks,
            0,
        );
        assert_eq!(outer(&held), "[unknown]+0x2fff");
        let freed = attributor.report(
            &input(vec![site(0, 1, 0, 64), site(1, 2, 0, 4096)]),
            &mut stacks,
            0,
        );
        assert_eq!(outer(&freed), "[unknown]+0x2fff");
    }
}
