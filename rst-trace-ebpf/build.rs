use which::which;

/// Building this crate needs bpf-linker; fail early with the fix rather than with a linker error.
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found: run `./x setup` (or `cargo install bpf-linker --version 0.13.0`)",
    );
    println!(
        "cargo:rerun-if-changed={}",
        bpf_linker.to_str().unwrap_or_default()
    );
}
