// The eBPF programs live in the `tollgate-ebpf` binary (src/main.rs); this
// library target only exists so userspace can declare a build-dependency on
// the package and be rebuilt when it changes.
#![no_std]
