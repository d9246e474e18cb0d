//! `vmdedup-guest`: run inside a guest. Shows the vmdedup module's counters
//! (sysfs) and what the host agent says about this VM, over vsock; asks the
//! host to preload a tree this VM may use.
//!
//! The host knows which VM is asking by the vsock connection (its socket or
//! CID), never by anything this tool says, and only tells a VM about itself.
//!
//! `scan-bars` plays the hostile root of a guest instead: it maps every PCI
//! BAR and searches it for bytes that must not be there (see [`scan`]).

mod scan;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_vsock::{VsockAddr, VsockStream, VMADDR_CID_HOST};
use vmdedup_protocol::control::{frame_body_len, Request, Response, MAX_FRAME_LEN};

/// vmdedup inside a guest: module counters and the host's view of this VM.
#[derive(Parser)]
#[command(name = "vmdedup-guest", version, about, long_about = None)]
struct Cli {
    /// vsock port of the host agent (its --vsock-port).
    #[arg(long, default_value_t = 5555, global = true)]
    port: u32,
    /// vsock CID of the host.
    #[arg(long, default_value_t = VMADDR_CID_HOST, global = true)]
    cid: u32,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The module's counters and the host's counters for this VM (default).
    ///
    /// Example: vmdedup-guest status
    Status,
    /// The namespaces this VM may use.
    ///
    /// Example: vmdedup-guest namespaces
    Namespaces,
    /// Ask the host to preload a tree into the pool: NS or NS/PATH, or a path
    /// under a vmdedupfs mount /shared/NS/...
    ///
    /// Example: vmdedup-guest warm /shared/debian/usr/lib
    Warm {
        /// What to preload.
        target: String,
    },
    /// Send malformed frames to the agent and check that each is refused and
    /// that the agent still answers afterwards (for the selftests).
    ///
    /// Example: vmdedup-guest check-malformed
    CheckMalformed,
    /// Map every PCI memory BAR of this guest read-only (as root) and search
    /// it for the needles in NEEDLES_FILE: one `LABEL HEX` per line. Prints
    /// each BAR scanned or skipped, `found LABEL (N): DEVICE resourceN
    /// +OFFSET, ...` or `missing LABEL` per needle, and the totals. With
    /// --file, searches those files instead (a pool file, on the host).
    ///
    /// Example: vmdedup-guest scan-bars /root/needles
    ScanBars {
        /// The needles: `LABEL HEX` per line, `#` comments.
        needles: PathBuf,
        /// Search this file instead of the BARs (repeatable).
        #[arg(long = "file")]
        files: Vec<PathBuf>,
        /// Where the PCI devices are listed.
        #[arg(long, default_value = "/sys/bus/pci/devices")]
        devices: PathBuf,
    },
}

async fn connect(cid: u32, port: u32) -> anyhow::Result<VsockStream> {
    let s = tokio::time::timeout(Duration::from_secs(5), VsockStream::connect(VsockAddr::new(cid, port)))
        .await
        .context("timed out connecting to the host agent over vsock")?
        .with_context(|| format!("cannot connect to the host agent on vsock {cid}:{port} (is a vsock device attached and the agent serving guests?)"))?;
    Ok(s)
}

async fn read_response(s: &mut VsockStream) -> anyhow::Result<Response> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(120), s.read_exact(&mut len))
        .await
        .context("the agent did not answer")??;
    let n = frame_body_len(len).map_err(|e| anyhow::anyhow!("bad frame from the agent: {e}"))?;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).await?;
    Response::decode_body(&body).map_err(|e| anyhow::anyhow!("bad frame from the agent: {e}"))
}

async fn rpc(cid: u32, port: u32, req: &Request) -> anyhow::Result<Response> {
    let mut s = connect(cid, port).await?;
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = req
        .encode(&mut buf)
        .map_err(|e| anyhow::anyhow!("encoding: {e}"))?;
    s.write_all(&buf[..n]).await?;
    match read_response(&mut s).await? {
        Response::Error { code, message } => {
            bail!(
                "the agent refused{}: {}",
                code.refusal_kind(),
                message.as_str()
            )
        }
        r => Ok(r),
    }
}

/// Prints every readable file under the module's sysfs directory as `key value`.
fn print_module_counters(dir: &Path) -> anyhow::Result<()> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(v) = std::fs::read_to_string(&p) {
                let key = p
                    .strip_prefix(base)
                    .unwrap_or(&p)
                    .display()
                    .to_string()
                    .replace('/', ".");
                out.push((key, v.trim().replace('\n', "; ")));
            }
        }
    }
    if !dir.is_dir() {
        println!("module: not loaded ({} missing)", dir.display());
        return Ok(());
    }
    let mut kv = Vec::new();
    walk(dir, dir, &mut kv);
    kv.sort();
    println!("module ({}):", dir.display());
    for (k, v) in kv {
        println!("  {k:<32} {v}");
    }
    Ok(())
}

/// Splits a warm target into (namespace, namespace-relative path).
fn warm_target(t: &str) -> anyhow::Result<(String, String)> {
    let p = PathBuf::from(t);
    let rel = match p.strip_prefix("/shared") {
        Ok(r) => r.display().to_string(),
        Err(_) if t.starts_with('/') => bail!("{t}: give NS[/PATH] or a path under /shared/NS"),
        Err(_) => t.to_string(),
    };
    let (ns, path) = rel.split_once('/').unwrap_or((rel.as_str(), ""));
    if ns.is_empty() {
        bail!("{t}: no namespace");
    }
    Ok((ns.to_string(), path.trim_end_matches('/').to_string()))
}

fn bounded<const N: usize>(s: &str, what: &str) -> anyhow::Result<heapless::String<N>> {
    let mut out = heapless::String::new();
    out.push_str(s)
        .map_err(|_| anyhow::anyhow!("{what}: at most {N} bytes"))?;
    Ok(out)
}

async fn check_malformed(cid: u32, port: u32) -> anyhow::Result<()> {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized length", (u32::MAX).to_le_bytes().to_vec()),
        (
            "wrong version",
            [6u32.to_le_bytes().to_vec(), vec![0xee, 0xee, 0, 0, 0, 0]].concat(),
        ),
        (
            "garbage payload",
            [
                6u32.to_le_bytes().to_vec(),
                vec![1, 0, 0xff, 0xff, 0xff, 0xff],
            ]
            .concat(),
        ),
        ("empty body", 0u32.to_le_bytes().to_vec()),
    ];
    let mut failed = 0;
    for (name, bytes) in cases {
        let mut s = connect(cid, port).await?;
        s.write_all(&bytes).await?;
        match read_response(&mut s).await {
            Ok(Response::Error { code, message }) => {
                println!("ok: {name}: refused ({code:?}: {})", message.as_str())
            }
            Ok(other) => {
                println!("FAIL: {name}: answered {other:?}");
                failed += 1;
            }
            Err(e) => println!("ok: {name}: connection closed ({e})"),
        }
    }
    match rpc(cid, port, &Request::Status).await {
        Ok(Response::Status(_)) => println!("ok: the agent still answers"),
        Ok(other) => {
            println!("FAIL: status answered {other:?}");
            failed += 1;
        }
        Err(e) => {
            println!("FAIL: the agent no longer answers: {e:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (cid, port) = (cli.cid, cli.port);
    match cli.command.unwrap_or(Command::Status) {
        Command::Status => {
            print_module_counters(Path::new("/sys/kernel/vmdedup"))?;
            let Response::Status(r) = rpc(cid, port, &Request::Status).await? else {
                bail!("unexpected answer")
            };
            println!("host (this VM):");
            for v in &r.vms {
                let c = &v.counters;
                println!(
                    "  vm {} (domain {}){}",
                    v.name.as_str(),
                    v.domain.as_str(),
                    if v.cut_off { ", CUT OFF" } else { "" }
                );
                println!(
                    "  hints {}  hits {}  pages_mapped {}  maps_held {}  revocations_pending {}",
                    c.hints, c.hits, c.pages_mapped, v.maps_held, v.revocations_pending
                );
                println!(
                    "  hint latency p50/p99: {}/{} us",
                    c.hint_latency_us_p50, c.hint_latency_us_p99
                );
            }
        }
        Command::Namespaces => {
            let Response::Namespaces(ns) = rpc(cid, port, &Request::Namespaces).await? else {
                bail!("unexpected answer")
            };
            for n in &ns {
                println!("{}", n.name.as_str());
            }
        }
        Command::Warm { target } => {
            let (ns, path) = warm_target(&target)?;
            let req = Request::Warm {
                ns: bounded(&ns, "namespace")?,
                path: bounded(&path, "path")?,
            };
            let Response::Warmed {
                files,
                pages,
                skipped,
            } = rpc(cid, port, &req).await?
            else {
                bail!("unexpected answer")
            };
            println!("warmed {ns}/{path}: {files} files, {pages} pages, {skipped} skipped");
        }
        Command::CheckMalformed => check_malformed(cid, port).await?,
        Command::ScanBars {
            needles,
            files,
            devices,
        } => scan_command(&needles, &files, &devices)?,
    }
    Ok(())
}

/// `scan-bars`: the BARs (or the files given) searched for every needle.
fn scan_command(needles: &Path, files: &[PathBuf], devices: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(needles)
        .with_context(|| format!("reading {}", needles.display()))?;
    let needles = scan::parse_needles(&text).with_context(|| format!("{}", needles.display()))?;
    let mut scanner = scan::Scanner::new(needles)?;
    if files.is_empty() {
        let t = scan::scan_bars(&mut scanner, devices)?;
        println!(
            "scanned: {} memory BARs, {} bytes; ivshmem ({:04x}:{:04x}): {} memory BARs, {} bytes",
            t.bars,
            t.bytes,
            scan::IVSHMEM_ID.0,
            scan::IVSHMEM_ID.1,
            t.ivshmem_bars,
            t.ivshmem_bytes
        );
    } else {
        let mut bytes = 0;
        for f in files {
            bytes += scan::scan_file(&mut scanner, f)?;
        }
        println!("scanned: {} files, {bytes} bytes", files.len());
    }
    print!("{}", scanner.report());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmdedup-guest: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmdedup-guest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::warm_target;

    #[test]
    fn warm_targets() {
        assert_eq!(
            warm_target("/shared/deb/usr/lib/").unwrap(),
            ("deb".into(), "usr/lib".into())
        );
        assert_eq!(warm_target("deb").unwrap(), ("deb".into(), "".into()));
        assert_eq!(
            warm_target("deb/a/b").unwrap(),
            ("deb".into(), "a/b".into())
        );
        assert!(warm_target("/etc/passwd").is_err());
        assert!(warm_target("/shared/").is_err());
    }
}
