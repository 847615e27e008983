// The eBPF target has no std; this empty library exists so that user-space
// crates can build-depend on the package (aya-build builds the binary).
#![no_std]
