//! `vmdedup warm` (a tree, or the paths of a profile) and `vmdedup files
//! --paths` (which writes such a profile).
//!
//! A profile is what guests of an image read, as the pool held it: one
//! namespace-relative path per line. Warming a whole image loads files no
//! guest reads (most of a distribution image); warming its profile loads
//! what guests will ask for, so their first hints hit.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vmdedup_host_agent::control;
use vmdedup_protocol::control::{ErrorCode, Name, RelPath, Request, Response, MAX_FILES};

use crate::{bounded, rpc, take_answer};

/// Fails unless the agent has namespace `ns` (naming those it has).
pub(crate) fn check_namespace(control: &Path, ns: &str) -> anyhow::Result<()> {
    let known = rpc(control, &Request::Namespaces, |r| match r {
        Response::Namespaces(n) => Some(n),
        _ => None,
    })?;
    if !known.iter().any(|n| n.name.as_str() == ns) {
        let names: Vec<&str> = known.iter().map(|n| n.name.as_str()).collect();
        bail!("no namespace {ns:?} (known: {})", names.join(", "));
    }
    Ok(())
}

/// `vmdedup files NS --paths`: every path of `ns` in the pools, sorted,
/// once each (a file in several domains' pools is listed once).
pub(crate) fn cmd_files_paths(control: &Path, ns: &str) -> anyhow::Result<()> {
    check_namespace(control, ns)?;
    let mut paths = BTreeSet::new();
    let mut offset = 0u32;
    loop {
        let req = Request::Files {
            ns: bounded(ns, "namespace name too long")?,
            offset,
            limit: MAX_FILES as u16,
        };
        let (total, files) = rpc(control, &req, |r| match r {
            Response::Files { total, files } => Some((total, files)),
            _ => None,
        })?;
        for f in &files {
            paths.insert(f.path.as_str().to_string());
        }
        offset = offset.saturating_add(files.len() as u32);
        // The listing may shrink while it is paged (evictions): stop at
        // its end, or at an empty page.
        if files.is_empty() || u64::from(offset) >= total {
            break;
        }
    }
    let mut unlisted = 0usize;
    let mut out = String::new();
    for p in &paths {
        // A line per path: a name with a line break cannot be one.
        if p.contains('\n') {
            unlisted += 1;
            continue;
        }
        out.push_str(p);
        out.push('\n');
    }
    print!("{out}");
    if unlisted > 0 {
        eprintln!("vmdedup: {unlisted} path(s) with a line break in the name left out");
    }
    Ok(())
}

/// Shows `line` on standard error, over the previous one, while `run` runs
/// (only on a terminal).
struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(mut line: impl FnMut(Duration) -> Option<String> + Send + 'static) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let done = Arc::clone(&done);
            let start = Instant::now();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Some(l) = line(start.elapsed()) {
                        eprint!("\r{l}   ");
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                eprintln!();
            })
        });
        Progress { done, thread }
    }

    fn finish(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The files, pages and skipped files of a [`Response::Warmed`].
fn warmed(r: Response) -> Option<(u64, u64, u64)> {
    match r {
        Response::Warmed {
            files,
            pages,
            skipped,
        } => Some((files, pages, skipped)),
        _ => None,
    }
}

/// `vmdedup warm NS [PATH]`.
pub(crate) fn cmd_warm(control: &Path, ns: &str, path: &str) -> anyhow::Result<()> {
    let req = Request::Warm {
        ns: bounded(ns, "namespace name too long")?,
        path: bounded(path, "path too long")?,
    };
    // The agent does the loading; meanwhile show the pool filling up.
    let start = Instant::now();
    let sock = control.to_path_buf();
    let mut first = None;
    let progress = Progress::start(move |t| match control::request(&sock, &Request::Status) {
        Ok(Response::Status(r)) => {
            let base = *first.get_or_insert(r.pool.frames_used);
            let loaded = r.pool.frames_used.saturating_sub(base);
            Some(format!(
                "warming: {loaded} frames loaded, {} MiB, {:.0}s",
                (loaded * 4096) >> 20,
                t.as_secs_f64()
            ))
        }
        _ => None,
    });
    let resp = rpc(control, &req, warmed);
    progress.finish();
    let (files, pages, skipped) =
        resp.with_context(|| format!("warm {ns} {path}").trim_end().to_string())?;
    println!(
        "warmed {ns}/{path}: {files} files, {pages} pages, {skipped} skipped, in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The paths of a profile: one per line; empty lines and lines that start
/// with `#` are skipped. Errors name the line.
fn profile_paths(text: &str) -> anyhow::Result<Vec<RelPath>> {
    let mut paths = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('/') {
            bail!(
                "line {}: {line:?} is absolute; a profile lists paths inside the namespace, as `vmdedup files NS --paths` prints them",
                i + 1
            );
        }
        paths.push(bounded(line, "path too long").with_context(|| format!("line {}", i + 1))?);
    }
    Ok(paths)
}

/// `vmdedup warm NS --from FILE`: warms each path the profile lists. A
/// path that is no longer in the namespace is counted and skipped (an
/// image changes between the run that wrote the profile and this one);
/// any other refusal stops.
pub(crate) fn cmd_warm_from(control: &Path, ns: &str, from: &Path) -> anyhow::Result<()> {
    let text = if from == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the profile from standard input")?;
        s
    } else {
        std::fs::read_to_string(from)
            .with_context(|| format!("reading the profile {}", from.display()))?
    };
    let paths = profile_paths(&text).with_context(|| format!("profile {}", from.display()))?;
    check_namespace(control, ns)?;
    let start = Instant::now();
    let total = paths.len();
    let counts = Arc::new([
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ]);
    let shown = Arc::clone(&counts);
    let progress = Progress::start(move |t| {
        Some(format!(
            "warming: {} of {total} paths, {} pages, {:.0}s",
            shown[0].load(Ordering::Relaxed),
            shown[1].load(Ordering::Relaxed),
            t.as_secs_f64()
        ))
    });
    let (mut files, mut pages, mut skipped) = (0u64, 0u64, 0u64);
    let mut missing = Vec::new();
    let mut failed = None;
    let ns_name: Name = bounded(ns, "namespace name too long")?;
    for p in &paths {
        let path = p.as_str();
        let req = Request::Warm {
            ns: ns_name.clone(),
            path: p.clone(),
        };
        let resp = match control::request(control, &req) {
            Ok(r) => r,
            Err(e) => {
                failed = Some((path, crate::unreachable(control, &e)));
                break;
            }
        };
        if let Response::Error {
            code: ErrorCode::NotFound,
            ..
        } = resp
        {
            missing.push(path);
        } else {
            match take_answer(&req, resp, warmed) {
                Ok((f, p, s)) => {
                    files += f;
                    pages += p;
                    skipped += s;
                }
                Err(e) => {
                    failed = Some((path, e));
                    break;
                }
            }
        }
        counts[0].fetch_add(1, Ordering::Relaxed);
        counts[1].store(pages, Ordering::Relaxed);
    }
    progress.finish();
    if let Some((path, e)) = failed {
        return Err(e.context(format!(
            "warm {ns} {path} (from {}: {} of {total} paths done)",
            from.display(),
            counts[0].load(Ordering::Relaxed)
        )));
    }
    for p in missing.iter().take(5) {
        eprintln!("vmdedup: {p:?} is not in namespace {ns} any more: skipped");
    }
    if missing.len() > 5 {
        eprintln!("vmdedup: ... and {} more not in it", missing.len() - 5);
    }
    println!(
        "warmed {ns} from {}: {total} paths ({} not in the namespace), {files} files, {pages} pages, {skipped} skipped, in {:.1}s",
        from.display(),
        missing.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_skips_blanks_and_comments_and_refuses_what_is_no_path() {
        let p = profile_paths("usr/bin/python3\n\n# a comment\nusr/lib/x.so\n").unwrap();
        let p: Vec<&str> = p.iter().map(|p| p.as_str()).collect();
        assert_eq!(p, ["usr/bin/python3", "usr/lib/x.so"]);
        let e = profile_paths("a\n/etc/passwd\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
        let long = "a/".repeat(3000);
        let e = profile_paths(&format!("ok\n{long}\n")).unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
        assert!(profile_paths("").unwrap().is_empty());
    }
}
