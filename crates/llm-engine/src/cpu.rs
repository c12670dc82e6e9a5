//! The machine a figure was measured on.

/// The CPU, as `lscpu` names it, its core count, and the instruction sets the kernels choose
/// between: what goes beside every figure, since they differ by CPU family.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == name)
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let have: Vec<&str> = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
        "amx_tile",
    ]
    .into_iter()
    .filter(|flag| flags.contains(flag))
    .collect();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "CPU: {} (family {}, model {}; {cores} cores; flags that matter: {})",
        field("model name"),
        field("cpu family"),
        field("model"),
        if have.is_empty() {
            "none".to_owned()
        } else {
            have.join(", ")
        }
    )
}
