//! Ring buffer records: see `memtrace::fuzzing::event_batch`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace::fuzzing::event_batch(data));
