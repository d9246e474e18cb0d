//! `tree-pages DIR`: the 4 KiB pages of every regular file under a tree,
//! counted as the agent's page store counts them.
//!
//! Each file's last page is zero-padded; symlinks are neither counted nor
//! followed, and nothing but regular files and directories is looked at.
//! Prints one line of JSON: `files`, `pages` (their sum) and `unique_pages`
//! (distinct page contents). The sharing selftest compares the agent's
//! `frames_used` and `pages_mapped` with these numbers.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The page size the agent's page store works in.
const PAGE: usize = 4096;

/// Arguments of `tree-pages`.
#[derive(clap::Args)]
pub struct Args {
    /// The tree (a directory).
    dir: PathBuf,
}

/// What `tree-pages` counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TreePages {
    /// Regular files (symlinks excluded).
    pub files: u64,
    /// Pages of all of them, each file's last partial page counted whole.
    pub pages: u64,
    /// Distinct page contents (a partial page zero-padded first).
    pub unique_pages: u64,
}

impl TreePages {
    /// The JSON line `tree-pages` prints.
    pub fn json(&self) -> String {
        format!(
            "{{\"files\": {}, \"pages\": {}, \"unique_pages\": {}}}",
            self.files, self.pages, self.unique_pages
        )
    }
}

/// Runs `tree-pages`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.dir.is_dir() {
        anyhow::bail!("{} is not a directory", args.dir.display());
    }
    println!("{}", count(&args.dir)?.json());
    Ok(())
}

/// Counts the pages under `dir`.
pub fn count(dir: &Path) -> anyhow::Result<TreePages> {
    let mut totals = TreePages::default();
    let mut seen = HashSet::new();
    let mut page = vec![0u8; PAGE];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        // A directory that cannot be listed is passed over, as a walk that
        // ignores errors would (the trees are this host's own files).
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            // The entry's own type: a symlink is a symlink here, never its target.
            let Ok(ty) = entry.file_type() else { continue };
            let path = entry.path();
            if ty.is_dir() {
                todo.push(path);
            } else if ty.is_file() {
                totals.files += 1;
                let mut f =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                loop {
                    let n = read_page(&mut f, &mut page)
                        .with_context(|| format!("reading {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    page[n..].fill(0);
                    totals.pages += 1;
                    seen.insert(*blake3::hash(&page).as_bytes());
                    if n < PAGE {
                        break;
                    }
                }
            }
        }
    }
    totals.unique_pages = seen.len() as u64;
    Ok(totals)
}

/// Fills `buf` from `f` up to its end; returns how many bytes it read (less
/// than `buf.len()` only at the end of the file).
fn read_page(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("vmdedup-tree-pages-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn counts_pages_pads_the_last_and_skips_symlinks() {
        let d = scratch("basic");
        // Two pages: one of 'a's, then 10 'b's padded with zeros.
        let mut two = vec![b'a'; PAGE];
        two.extend_from_slice(&[b'b'; 10]);
        fs::write(d.join("two"), &two).unwrap();
        // The same first page again, in a subdirectory: not unique.
        fs::create_dir(d.join("sub")).unwrap();
        fs::write(d.join("sub/one"), vec![b'a'; PAGE]).unwrap();
        // The padded page written out whole: the same contents as the padded one.
        let mut padded = vec![b'b'; 10];
        padded.resize(PAGE, 0);
        fs::write(d.join("sub/padded"), &padded).unwrap();
        // An empty file: a file, no page.
        fs::write(d.join("empty"), b"").unwrap();
        // Symlinks to a file and to a directory: neither counted nor followed.
        std::os::unix::fs::symlink(d.join("two"), d.join("link")).unwrap();
        std::os::unix::fs::symlink(d.join("sub"), d.join("dirlink")).unwrap();

        let got = count(&d).unwrap();
        fs::remove_dir_all(&d).unwrap();
        assert_eq!(
            got,
            TreePages {
                files: 4,
                pages: 4,
                unique_pages: 2
            }
        );
        assert_eq!(got.json(), r#"{"files": 4, "pages": 4, "unique_pages": 2}"#);
    }

    #[test]
    fn a_zero_page_and_a_short_zero_file_are_one_content() {
        let d = scratch("zeros");
        fs::write(d.join("z4k"), vec![0u8; PAGE]).unwrap();
        fs::write(d.join("z1"), [0u8]).unwrap();
        let got = count(&d).unwrap();
        fs::remove_dir_all(&d).unwrap();
        assert_eq!(
            got,
            TreePages {
                files: 2,
                pages: 2,
                unique_pages: 1
            }
        );
    }
}
