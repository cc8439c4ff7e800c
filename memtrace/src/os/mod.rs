//! What memtrace reads from, and does to, the operating system outside eBPF: `/proc` (`procfs`),
//! cgroups (`cgroup`), the clocks (`clock`), files other processes control (`files`) and starting a
//! command under the tracer (`launch`).
//! Parsers take text so they are tested on samples; readers add the file I/O.

pub mod cgroup;
pub mod clock;
pub mod files;
pub mod launch;
pub mod procfs;
