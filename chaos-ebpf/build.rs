fn main() {
    // bpf-linker is not a Cargo dependency: rebuild when it changes.
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
