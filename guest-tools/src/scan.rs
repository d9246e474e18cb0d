//! `vmdedup-guest scan-bars`: what a hostile root in a guest sees through its
//! PCI devices. Every memory BAR of every PCI device is mapped read-only and
//! searched for byte strings (needles) that must, or must not, be there: the
//! selftests look for another trust domain's file contents and names.
//!
//! A BAR is device memory, not RAM: it is read with aligned volatile loads,
//! chunk by chunk, into an ordinary buffer, and only that copy is searched.
//! Nothing about a BAR (a mapping that fails, a size the kernel reports)
//! stops the scan; it is reported and the scan goes on.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use anyhow::{bail, Context};

/// Longest needle accepted, in bytes.
pub const MAX_NEEDLE: usize = 4096;
/// Bytes copied out of a BAR (or read from a file) per search step.
const CHUNK: usize = 1 << 20;
/// Places reported per needle; the rest are only counted.
const MAX_PLACES: usize = 8;
/// `IORESOURCE_IO` and `IORESOURCE_MEM` in a sysfs `resource` line's flags.
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
/// PCI vendor:device of QEMU's ivshmem devices (ring regions and pools).
pub const IVSHMEM_ID: (u16, u16) = (0x1af4, 0x1110);

/// One byte string to look for, with the label it is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needle {
    /// The name in reports (no whitespace).
    pub label: String,
    /// The bytes searched for (1..=[`MAX_NEEDLE`]).
    pub bytes: Vec<u8>,
}

/// Parses a needles file: one needle per line, `LABEL HEX` (label without
/// whitespace, the bytes as an even number of hex digits). Blank lines and
/// lines starting with `#` are ignored.
pub fn parse_needles(text: &str) -> anyhow::Result<Vec<Needle>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(label), Some(hex), None) = (words.next(), words.next(), words.next()) else {
            bail!("line {}: want LABEL HEX", i + 1);
        };
        let bytes = parse_hex(hex).with_context(|| format!("line {}: needle {label}", i + 1))?;
        if bytes.is_empty() || bytes.len() > MAX_NEEDLE {
            bail!("line {}: needle {label}: 1 to {MAX_NEEDLE} bytes", i + 1);
        }
        out.push(Needle {
            label: label.to_string(),
            bytes,
        });
    }
    if out.is_empty() {
        bail!("no needles");
    }
    Ok(out)
}

fn parse_hex(hex: &str) -> anyhow::Result<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = hex.as_bytes();
    if !s.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    s.chunks_exact(2)
        .map(|p| match (digit(p[0]), digit(p[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => bail!("not a hex digit in {:?}", String::from_utf8_lossy(p)),
        })
        .collect()
}

/// One line of a PCI device's sysfs `resource` file: `start end flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// First bus address.
    pub start: u64,
    /// Last bus address (inclusive); 0 with `start` 0 for an unused BAR.
    pub end: u64,
    /// The kernel's `IORESOURCE_*` flags.
    pub flags: u64,
}

impl Resource {
    /// Length in bytes (0 for an unused or inconsistent entry).
    pub fn len(&self) -> u64 {
        if self.end < self.start || (self.start == 0 && self.end == 0) {
            0
        } else {
            (self.end - self.start).saturating_add(1)
        }
    }
}

/// Parses a sysfs `resource` file (three hex numbers per line). A line that
/// does not parse becomes an unused entry, so indices stay BAR numbers.
pub fn parse_resources(text: &str) -> Vec<Resource> {
    fn num(w: Option<&str>) -> Option<u64> {
        let w = w?;
        u64::from_str_radix(w.strip_prefix("0x").unwrap_or(w), 16).ok()
    }
    text.lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            match (num(w.next()), num(w.next()), num(w.next())) {
                (Some(start), Some(end), Some(flags)) => Resource { start, end, flags },
                _ => Resource {
                    start: 0,
                    end: 0,
                    flags: 0,
                },
            }
        })
        .collect()
}

/// Where a needle was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The region (`DEVICE resourceN`, or a file path).
    pub region: String,
    /// Byte offset in the region.
    pub offset: u64,
}

/// Searches regions for every needle at once and keeps what it found.
pub struct Scanner {
    needles: Vec<Needle>,
    automaton: AhoCorasick,
    /// Longest needle minus one: the bytes carried from one chunk into the next.
    carry: usize,
    places: Vec<Vec<Place>>,
    hits: Vec<u64>,
    buf: Vec<u8>,
}

impl Scanner {
    /// A scanner for `needles` (at least one).
    pub fn new(needles: Vec<Needle>) -> anyhow::Result<Self> {
        let automaton = AhoCorasick::new(needles.iter().map(|n| &n.bytes))
            .context("building the needle automaton")?;
        let carry = needles
            .iter()
            .map(|n| n.bytes.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let n = needles.len();
        Ok(Self {
            needles,
            automaton,
            carry,
            places: vec![Vec::new(); n],
            hits: vec![0; n],
            buf: Vec::with_capacity(CHUNK + carry),
        })
    }

    /// Searches one region of `len` bytes. `fill(offset, out)` copies the
    /// region's bytes at `offset` into all of `out` (never past `len`).
    pub fn scan_region(
        &mut self,
        region: &str,
        len: u64,
        mut fill: impl FnMut(u64, &mut [u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.buf.clear();
        let mut offset = 0u64;
        while offset < len {
            let n = usize::try_from((len - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
            // The buffer holds the last `kept` bytes of the previous chunk,
            // then this chunk: a needle across the boundary is found here.
            let kept = self.buf.len();
            self.buf.resize(kept + n, 0);
            fill(offset, &mut self.buf[kept..])?;
            let base = offset - kept as u64;
            for m in self.automaton.find_overlapping_iter(&self.buf[..]) {
                // Wholly inside the carried bytes: found with the last chunk.
                if m.end() <= kept {
                    continue;
                }
                let i = m.pattern().as_usize();
                self.hits[i] += 1;
                if self.places[i].len() < MAX_PLACES {
                    self.places[i].push(Place {
                        region: region.to_string(),
                        offset: base + m.start() as u64,
                    });
                }
            }
            let keep = self.carry.min(self.buf.len());
            let drop = self.buf.len() - keep;
            self.buf.drain(..drop);
            offset += n as u64;
        }
        Ok(())
    }

    /// One line per needle: `found LABEL (N): place, ...` or `missing LABEL`,
    /// then `needles: F of N found`.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let mut found = 0;
        for (i, n) in self.needles.iter().enumerate() {
            if self.hits[i] == 0 {
                let _ = writeln!(out, "missing {}", n.label);
                continue;
            }
            found += 1;
            let places: Vec<String> = self.places[i]
                .iter()
                .map(|p| format!("{} +{:#x}", p.region, p.offset))
                .collect();
            let more = self.hits[i] - self.places[i].len() as u64;
            let _ = write!(
                out,
                "found {} ({}): {}",
                n.label,
                self.hits[i],
                places.join(", ")
            );
            if more > 0 {
                let _ = write!(out, " and {more} more");
            }
            out.push('\n');
        }
        let _ = writeln!(out, "needles: {found} of {} found", self.needles.len());
        out
    }
}

/// A read-only shared mapping of a sysfs `resourceN` file, unmapped on drop.
struct BarMapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl BarMapping {
    fn new(file: &File, len: usize) -> std::io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (no address hint), of a
        // file we hold open; nothing else in this process refers to it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { addr, len })
    }

    /// Copies `out.len()` bytes at `offset` out of the mapping with volatile
    /// loads, eight bytes at a time where aligned. The caller keeps
    /// `offset + out.len() <= self.len`.
    fn copy_out(&self, offset: usize, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            let at = offset + i;
            // Never past the mapping (a caller bug reads nothing, not beyond).
            if at >= self.len {
                break;
            }
            if at.is_multiple_of(8) && out.len() - i >= 8 && self.len - at >= 8 {
                // SAFETY: `at..at + 8` lies inside the live mapping (checked
                // above) and is 8-aligned, because the mapping is page-aligned.
                // Device memory may change under us: a volatile load copies
                // what is there now and nothing is assumed about it.
                let w = unsafe {
                    std::ptr::read_volatile(self.addr.cast::<u8>().add(at).cast::<u64>())
                };
                out[i..i + 8].copy_from_slice(&w.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: `at` lies inside the live mapping (checked above).
                out[i] = unsafe { std::ptr::read_volatile(self.addr.cast::<u8>().add(at)) };
                i += 1;
            }
        }
    }
}

impl Drop for BarMapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what mmap returned and nothing
        // refers to the mapping any more.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn read_id(dev: &Path, what: &str) -> Option<u16> {
    let s = std::fs::read_to_string(dev.join(what)).ok()?;
    let s = s.trim();
    u16::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

/// Totals of a BAR scan.
#[derive(Debug, Default)]
pub struct BarTotals {
    /// Memory BARs mapped and searched.
    pub bars: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, the ivshmem devices' memory BARs.
    pub ivshmem_bars: u64,
    /// And their bytes.
    pub ivshmem_bytes: u64,
}

/// Maps and searches every memory BAR (resource0..5) of every device under
/// `devices` (`/sys/bus/pci/devices`), printing one `bar ...` line per BAR.
pub fn scan_bars(scanner: &mut Scanner, devices: &Path) -> anyhow::Result<BarTotals> {
    let mut devs: Vec<PathBuf> = std::fs::read_dir(devices)
        .with_context(|| format!("listing {}", devices.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    devs.sort();
    let page = 4096u64;
    let mut t = BarTotals::default();
    for dev in devs {
        let name = dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ids = (read_id(&dev, "vendor"), read_id(&dev, "device"));
        let id = match ids {
            (Some(v), Some(d)) => format!("{v:04x}:{d:04x}"),
            _ => "????:????".to_string(),
        };
        let ivshmem = ids == (Some(IVSHMEM_ID.0), Some(IVSHMEM_ID.1));
        let table = match std::fs::read_to_string(dev.join("resource")) {
            Ok(s) => parse_resources(&s),
            Err(e) => {
                println!("bar {name} [{id}]: cannot read its resource table: {e}; skipped");
                continue;
            }
        };
        for (bar, r) in table.iter().enumerate().take(6) {
            let len = r.len();
            if len == 0 {
                continue;
            }
            let region = format!("{name} resource{bar}");
            if r.flags & IORESOURCE_IO != 0 {
                println!("bar {region} [{id}]: I/O ports, {len} bytes, skipped");
                continue;
            }
            if r.flags & IORESOURCE_MEM == 0 {
                println!(
                    "bar {region} [{id}]: neither memory nor I/O (flags {:#x}), skipped",
                    r.flags
                );
                continue;
            }
            let mut path = dev.join(format!("resource{bar}"));
            if !path.exists() {
                path = dev.join(format!("resource{bar}_wc"));
            }
            // The kernel maps whole pages from the one holding the BAR's
            // start; the BAR's bytes begin at the start's offset in it.
            let lead = r.start % page;
            let Some(map_len) = lead
                .checked_add(len)
                .and_then(|l| l.checked_next_multiple_of(page))
                .and_then(|l| usize::try_from(l).ok())
            else {
                println!("bar {region} [{id}]: absurd size {len}, skipped");
                continue;
            };
            let mapping = File::open(&path).and_then(|f| BarMapping::new(&f, map_len));
            let mapping = match mapping {
                Ok(m) => m,
                Err(e) => {
                    println!(
                        "bar {region} [{id}]: cannot map {}: {e}; skipped",
                        path.display()
                    );
                    continue;
                }
            };
            let lead = lead as usize;
            scanner.scan_region(&region, len, |off, out| {
                // `off + out.len() <= len`, so this stays inside `map_len`.
                mapping.copy_out(lead + off as usize, out);
                Ok(())
            })?;
            println!("bar {region} [{id}]: memory, {len} bytes, scanned");
            t.bars += 1;
            t.bytes += len;
            if ivshmem {
                t.ivshmem_bars += 1;
                t.ivshmem_bytes += len;
            }
        }
    }
    Ok(t)
}

/// Searches a whole file (read with plain reads), e.g. a pool memory file on
/// the host. Returns its length.
pub fn scan_file(scanner: &mut Scanner, path: &Path) -> anyhow::Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let region = path.display().to_string();
    scanner.scan_region(&region, len, |_, out| {
        f.read_exact(out)
            .with_context(|| format!("reading {}", path.display()))
    })?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn needle(label: &str, bytes: &[u8]) -> Needle {
        Needle {
            label: label.into(),
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn needles_file() {
        let n = parse_needles("# comment\n\na 00ff\nb   DEADbeef  \n").unwrap();
        assert_eq!(
            n,
            vec![
                needle("a", &[0, 0xff]),
                needle("b", &[0xde, 0xad, 0xbe, 0xef])
            ]
        );
        assert!(parse_needles("").is_err());
        assert!(parse_needles("a 0").is_err());
        assert!(parse_needles("a zz").is_err());
        assert!(parse_needles("a").is_err());
        assert!(parse_needles("a 00 11").is_err());
        assert!(parse_needles(&format!("a {}", "00".repeat(MAX_NEEDLE + 1))).is_err());
    }

    #[test]
    fn resource_table() {
        let t = parse_resources(
            "0x000000000000c000 0x000000000000c03f 0x0000000000040101\n\
             0x00000000febf1000 0x00000000febf10ff 0x0000000000040200\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
             junk\n",
        );
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].len(), 0x40);
        assert_ne!(t[0].flags & IORESOURCE_IO, 0);
        assert_eq!(t[1].len(), 0x100);
        assert_ne!(t[1].flags & IORESOURCE_MEM, 0);
        assert_eq!(t[2].len(), 0);
        assert_eq!(t[3].len(), 0);
    }

    /// Scans `data` in chunks of `step` bytes (the carry logic, not CHUNK).
    fn scan(needles: Vec<Needle>, data: &[u8]) -> Scanner {
        let mut s = Scanner::new(needles).unwrap();
        s.scan_region("mem", data.len() as u64, |off, out| {
            let off = off as usize;
            out.copy_from_slice(&data[off..off + out.len()]);
            Ok(())
        })
        .unwrap();
        s
    }

    #[test]
    fn finds_across_chunks_once() {
        let mut data = vec![0u8; 3 * CHUNK];
        let a = b"needle-across-the-boundary";
        let at = CHUNK - 10;
        data[at..at + a.len()].copy_from_slice(a);
        let b = b"second";
        data[2 * CHUNK + 5..2 * CHUNK + 5 + b.len()].copy_from_slice(b);
        let s = scan(
            vec![needle("a", a), needle("b", b), needle("c", b"absent")],
            &data,
        );
        assert_eq!(s.hits, vec![1, 1, 0]);
        assert_eq!(s.places[0][0].offset, at as u64);
        assert_eq!(s.places[1][0].offset, (2 * CHUNK + 5) as u64);
        let r = s.report();
        assert!(r.contains("found a (1): mem +0xffff6"), "{r}");
        assert!(r.contains("missing c"), "{r}");
        assert!(r.ends_with("needles: 2 of 3 found\n"), "{r}");
    }

    #[test]
    fn short_needle_near_a_boundary_counted_once() {
        // A short needle inside the carried tail of the first chunk.
        let mut data = vec![0u8; CHUNK + 100];
        data[CHUNK - 3..CHUNK - 1].copy_from_slice(b"xy");
        let s = scan(vec![needle("long", &[7u8; 64]), needle("xy", b"xy")], &data);
        assert_eq!(s.hits, vec![0, 1]);
    }

    #[test]
    fn copy_out_of_a_mapping() {
        let dir = std::env::temp_dir().join(format!("vmdedup-scan-{}", std::process::id()));
        let mut x = 0x9e37_79b9_u32;
        let data: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        std::fs::write(&dir, &data).unwrap();
        let f = File::open(&dir).unwrap();
        let m = BarMapping::new(&f, 12_288).unwrap();
        let mut out = vec![0u8; 1000];
        m.copy_out(3, &mut out);
        assert_eq!(out, data[3..1003]);
        let mut s = Scanner::new(vec![needle("n", &data[5000..5064])]).unwrap();
        assert_eq!(scan_file(&mut s, &dir).unwrap(), 10_000);
        assert_eq!(s.places[0][0].offset, 5000);
        std::fs::remove_file(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn needles_parser_never_panics(text in ".{0,200}") {
            let _ = parse_needles(&text);
        }

        #[test]
        fn resource_parser_never_panics(text in "[0-9a-fx \n]{0,200}") {
            for r in parse_resources(&text) {
                let _ = r.len();
            }
        }

        #[test]
        fn needles_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1..100)) {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let n = parse_needles(&format!("x {hex}\n")).unwrap();
            prop_assert_eq!(&n[0].bytes, &bytes);
        }

    }

    proptest! {
        // Each case searches 2 MiB: a few dozen are plenty.
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn finds_every_planted_needle(at in 0usize..(2 * CHUNK - 64), len in 1usize..64) {
            let data: Vec<u8> = (0..2 * CHUNK).map(|i| (i % 7) as u8 + 1).collect();
            let mut data = data;
            let pat: Vec<u8> = (0..len).map(|i| 0x80 | i as u8).collect();
            data[at..at + len].copy_from_slice(&pat);
            let s = scan(vec![needle("p", &pat)], &data);
            prop_assert_eq!(s.hits[0], 1);
            prop_assert_eq!(s.places[0][0].offset, at as u64);
        }
    }
}
