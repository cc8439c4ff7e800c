//! Configuration files: see `memtrace::fuzzing::config_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| memtrace::fuzzing::config_toml(text));
