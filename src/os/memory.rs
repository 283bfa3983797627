//! The memory this process can use: the machine's available memory, bounded by the cgroup's
//! limit where there is one (containers, Slurm jobs), from `sysinfo`.

/// Bytes this process can still allocate without swapping or being killed, as far as the
/// operating system tells; `None` where it does not.
pub fn available_bytes() -> Option<u64> {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let machine = sys.available_memory();
    let limit = sys.cgroup_limits().map(|c| c.free_memory);
    match (machine, limit) {
        (0, None) => None,
        (0, Some(l)) => Some(l),
        (m, Some(l)) => Some(m.min(l)),
        (m, None) => Some(m),
    }
}

/// `bytes` for people: `1.5 GiB`, `320.0 MiB`, `12.0 KiB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        b_ if b_ >= 1 << 40 => format!("{:.1} TiB", b / (1u64 << 40) as f64),
        b_ if b_ >= 1 << 30 => format!("{:.1} GiB", b / f64::from(1u32 << 30)),
        b_ if b_ >= 1 << 20 => format!("{:.1} MiB", b / f64::from(1u32 << 20)),
        _ => format!("{:.1} KiB", b / 1024.0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_reports_some_available_memory() {
        let b = super::available_bytes().expect("Linux reports MemAvailable");
        assert!(b > 1 << 20, "{b}");
        assert_eq!(super::human(3 << 29), "1.5 GiB");
        assert_eq!(super::human(5 << 20), "5.0 MiB");
    }
}
