// Empty on purpose: this lets the agent build-depend on this crate so that cargo rebuilds the agent
// when the eBPF programs change. The programs themselves are the `memtrace` binary target.
#![no_std]
