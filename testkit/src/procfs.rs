//! A process's memory and CPU time, from /proc (Linux).

use std::io;

fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// Resident set size now, in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident set size so far, in bytes.
pub fn peak_rss_bytes(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on every Linux this runs on).
const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time the process has used, in microseconds (10 ms resolution).
pub fn cpu_us(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let bad = || io::Error::other(format!("unexpected /proc/{pid}/stat: {stat}"));
    let after = stat.rsplit_once(')').ok_or_else(bad)?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")" come state (field 3) ...; utime is field 14 and stime 15 (1-based, man proc).
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    Ok((utime + stime) * 1_000_000 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_cpu_and_memory() {
        let pid = std::process::id();
        assert!(super::cpu_us(pid).is_ok());
        assert!(super::rss_bytes(pid).expect("rss") > 0);
        assert!(super::peak_rss_bytes(pid).expect("peak") > 0);
    }
}
