//! `vmdedup`: the vmdedup host agent and its command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use vmdedup_host_agent::region;
use vmdedup_protocol::abi::RegionKind;

/// vmdedup host agent: serves file pages shared by all VMs from one pool.
#[derive(Parser)]
#[command(name = "vmdedup", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or inspect shared region files (the ring and pool ivshmem backings).
    #[command(subcommand)]
    Region(RegionCommand),
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    /// A per-VM ring region (read-write for that VM).
    Ring,
    /// The pool region shared read-only by all VMs.
    Pool,
}

#[derive(Subcommand)]
enum RegionCommand {
    /// Create (or re-initialise) a region file and write its header.
    ///
    /// Example: vmdedup region init --kind ring --size 1M /dev/shm/vm1.ring
    Init {
        /// Which kind of region to create.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Size of the region: a power of two of at least 4K (suffixes K, M, G).
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        size: u64,
        /// Generation number to write (default: derived from the current time).
        #[arg(long)]
        generation: Option<u64>,
        /// The region file to create.
        path: PathBuf,
    },
    /// Print what a region file's header says.
    ///
    /// Example: vmdedup region show /dev/shm/vmdedup.pool
    Show {
        /// The region file.
        path: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&s[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&s[..i], 1u64 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&s[..i], 1u64 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size (examples: 4096, 64K, 16M, 1G)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("'{s}' is too large"))
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Region(RegionCommand::Init { kind, size, generation, path }) => {
            let kind = match kind {
                KindArg::Ring => RegionKind::Ring,
                KindArg::Pool => RegionKind::Pool,
            };
            let generation = generation.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            let p = region::init(&path, kind, size, generation)
                .with_context(|| format!("creating region {}", path.display()))?;
            println!("{}: {:?} region, version {}, {} bytes, generation {}", path.display(), kind, p.version, p.region_size, p.generation);
        }
        Command::Region(RegionCommand::Show { path }) => {
            let (kind, p) = region::inspect(&path)?;
            println!("{}: {:?} region, version {}, header {} bytes, {} bytes, generation {}", path.display(), kind, p.version, p.header_size, p.region_size, p.generation);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmdedup: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
