//! Query strings of the HTTP routes: see `memtrace::fuzzing::http_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|query: &str| memtrace::fuzzing::http_query(query));
