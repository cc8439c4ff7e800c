//! Unwinding user stacks through code built without frame pointers: each executable object's
//! CFI becomes a compact table (`table`), tables are loaded into the kernel's maps for the
//! processes that map them (`manager`), and the kernel walks stacks with them.

pub mod manager;
pub mod table;

pub use self::manager::{
    Registration, TableManager, UnwindError, UnwindLimits, UnwindMaps, UnwindStats,
};
