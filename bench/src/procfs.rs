//! What the host kernel says about processes and KSM: guest-RAM residency
//! from `/proc/PID/smaps`, CPU time from `/proc/PID/stat`, KSM counters from
//! `/sys/kernel/mm/ksm`.

use std::fs;
use std::path::Path;

/// Residency of a QEMU process's guest-RAM mapping(s), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RamUse {
    /// Resident pages (`Rss`): counts a KSM-merged page once per mapping.
    pub rss: u64,
    /// Proportional share (`Pss`): a page mapped by k processes counts 1/k
    /// in each, so the sum over processes is the physical memory.
    pub pss: u64,
    /// The part of `rss` that is shared memory (`RssShmem`, memfd/shm RAM).
    pub rss_shmem: u64,
    /// The part of `rss` in transparent huge pages (`AnonHugePages`): a
    /// 2 MiB page is resident whole once the guest touched any of it.
    pub anon_huge: u64,
}

/// One VMA of an smaps file.
#[derive(Debug, Default)]
struct Vma {
    path: String,
    perms: String,
    size_kb: u64,
    rss_kb: u64,
    pss_kb: u64,
    shmem_kb: u64,
    anon_huge_kb: u64,
}

fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(first) = it.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // "start-end perms offset dev inode [path]"
            let perms = it.next().unwrap_or("").to_string();
            let path = it.nth(3).unwrap_or("").to_string();
            let rest: Vec<&str> = it.collect();
            let path = if rest.is_empty() {
                path
            } else {
                format!("{path} {}", rest.join(" "))
            };
            out.push(Vma {
                path,
                perms,
                ..Vma::default()
            });
            continue;
        }
        let Some(vma) = out.last_mut() else { continue };
        let kb = it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match first {
            "Size:" => vma.size_kb = kb,
            "Rss:" => vma.rss_kb = kb,
            "Pss:" => vma.pss_kb = kb,
            "Shared_Hugetlb:" => {}
            "Pss_Shmem:" => {}
            "RssShmem:" => vma.shmem_kb = kb,
            "AnonHugePages:" => vma.anon_huge_kb = kb,
            _ => {}
        }
    }
    out
}

/// Whether a VMA can hold guest RAM of `ram_bytes`: an anonymous or memfd
/// mapping (`memory-backend-ram`, or `memory-backend-memfd`, whose memfd is
/// named after the backend's type or id), not executable (the TCG code buffer
/// is), and as large as the RAM (QEMU maps RAM in one piece; THP or KSM do
/// not split the VMA).
fn is_guest_ram(v: &Vma, ram_kb: u64) -> bool {
    let backing = v.path.is_empty() || v.path.starts_with("/memfd:");
    backing && !v.perms.contains('x') && v.size_kb == ram_kb
}

/// The guest-RAM residency of QEMU process `pid` whose RAM is `ram_bytes`.
/// `None` when the process is gone or has no such mapping.
pub fn guest_ram(pid: u32, ram_bytes: u64) -> Option<RamUse> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let ram_kb = ram_bytes / 1024;
    let mut found = false;
    let mut u = RamUse::default();
    for v in parse_smaps(&text)
        .iter()
        .filter(|v| is_guest_ram(v, ram_kb))
    {
        found = true;
        u.rss += v.rss_kb * 1024;
        u.pss += v.pss_kb * 1024;
        u.rss_shmem += v.shmem_kb * 1024;
        u.anon_huge += v.anon_huge_kb * 1024;
    }
    found.then_some(u)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User plus system CPU time of a process (all its threads) or a task, in
/// seconds. `stat_path` is `/proc/PID/stat` or `/proc/PID/task/TID/stat`.
pub fn cpu_seconds_at(stat_path: &Path) -> Option<f64> {
    let text = fs::read_to_string(stat_path).ok()?;
    // The command name may hold spaces and ')': fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(3) ... utime is field 14, stime 15 (1-based overall).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// CPU time of process `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU seconds per thread name of process `pid` (threads with the same name
/// are summed).
pub fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let comm = fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let Some(s) = cpu_seconds_at(&e.path().join("stat")) else {
            continue;
        };
        match out.iter_mut().find(|(n, _)| *n == comm) {
            Some((_, v)) => *v += s,
            None => out.push((comm, s)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The pid of the `ksmd` kernel thread, if any.
pub fn ksmd_pid() -> Option<u32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if fs::read_to_string(e.path().join("comm"))
            .map(|c| c.trim() == "ksmd")
            .unwrap_or(false)
        {
            return Some(pid);
        }
    }
    None
}

/// Reads one numeric KSM sysfs file (`None` when absent, e.g. no KSM).
pub fn ksm(name: &str) -> Option<i64> {
    fs::read_to_string(format!("/sys/kernel/mm/ksm/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Bytes a file occupies in memory or on disk (`st_blocks * 512`): for a
/// tmpfs file such as the pool, the pages actually allocated.
pub fn allocated_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0020000000 rw-p 00000000 00:00 0 
Size:             524288 kB
Rss:              102400 kB
Pss:               51200 kB
RssShmem:              0 kB
AnonHugePages:     98304 kB
7f1000000000-7f1040000000 rwxp 00000000 00:00 0 
Size:            1048576 kB
Rss:               20000 kB
Pss:               20000 kB
7f2000000000-7f2020000000 rw-s 00000000 00:01 42                         /memfd:ram (deleted)
Size:             524288 kB
Rss:                4096 kB
Pss:                4096 kB
RssShmem:           4096 kB
7f3000000000-7f3010000000 r--s 00000000 00:19 7                          /dev/shm/x/vmdedup.pool
Size:             262144 kB
Rss:                8192 kB
Pss:                2048 kB
";

    #[test]
    fn finds_guest_ram_and_skips_code_buffer_and_pool() {
        let v = parse_smaps(SMAPS);
        assert_eq!(v.len(), 4);
        let ram: Vec<&Vma> = v.iter().filter(|v| is_guest_ram(v, 524288)).collect();
        assert_eq!(ram.len(), 2);
        assert_eq!(ram[0].pss_kb, 51200);
        assert_eq!(ram[0].anon_huge_kb, 98304);
        assert_eq!(ram[1].path, "/memfd:ram (deleted)");
        assert_eq!(ram[1].shmem_kb, 4096);
    }

    #[test]
    fn finds_the_memfd_of_a_memory_backend_memfd() {
        // scripts/guest-run's guests: `-object memory-backend-memfd,id=ram`.
        let smaps = "\
7f5e23fff000-7f5e33fff000 rw-s 00000000 00:01 44715                      /memfd:memory-backend-memfd (deleted)
Size:             262144 kB
Rss:               90000 kB
Pss:               90000 kB
RssShmem:          90000 kB
";
        let v = parse_smaps(smaps);
        assert!(is_guest_ram(&v[0], 262144));
        assert!(!is_guest_ram(&v[0], 524288));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(!thread_cpu(std::process::id()).is_empty());
    }
}
