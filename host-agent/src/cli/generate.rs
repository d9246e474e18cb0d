//! `vmdedup generate`: the man pages and shell completion scripts, made
//! from the same clap definitions as the command line itself, so that they
//! never disagree with it. The install step (`scripts/install`, the Debian
//! package) runs it; it is hidden from `--help`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

/// What to generate.
#[derive(Subcommand)]
pub enum GenerateCommand {
    /// Write the man pages into DIR: vmdedup.1 and one per subcommand
    /// (vmdedup-serve.1, vmdedup-vm-add.1, ...).
    Man {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// Print SHELL's completion script on standard output.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs `what` for the command line `cmd`.
pub fn run(cmd: clap::Command, what: GenerateCommand) -> anyhow::Result<()> {
    match what {
        GenerateCommand::Man { dir } => man(cmd, &dir),
        GenerateCommand::Completions { shell } => {
            let mut cmd = cmd;
            let name = cmd.get_name().to_string();
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
            Ok(())
        }
    }
}

fn man(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}
