//! The exit status of each kind of failure: one table, printed by
//! `vmdedup --help`, in the man page and in `docs/install.md`.

/// The command line could not be parsed (clap's own status for it).
pub const USAGE: u8 = 2;
/// The agent received the request and refused it.
pub const REFUSED: u8 = 3;
/// The agent's control socket cannot be reached.
pub const UNREACHABLE: u8 = 4;
/// The configuration (its file or the options) is not valid, or the host
/// it would run on is not fit to serve it (`EX_CONFIG` of sysexits.h).
pub const CONFIG: u8 = 78;

/// The exit status table, as `--help` and the man page show it.
pub const HELP: &str = "\
Exit status:
  0   success
  1   any other failure (I/O, an unexpected answer, an internal error)
  2   usage: the command line could not be parsed
  3   the agent refused the request (no such VM or namespace, not allowed)
  4   the agent cannot be reached (not running, wrong --control, no access)
  78  the configuration (file or options) is not valid, or the host is
      not fit to serve it (every problem is printed)";

/// An error meaning the agent could not be reached: shown as its text, exit
/// status [`UNREACHABLE`].
#[derive(Debug)]
pub struct Unreachable(pub String);

/// An error meaning the agent refused the request: shown as its text, exit
/// status [`REFUSED`].
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}
impl std::error::Error for Refused {}

/// Parses the command line; on an error prints it and exits with
/// [`USAGE`] (`--help` and `--version` print and exit with 0).
pub fn parse_or_exit<P: clap::Parser>() -> P {
    P::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { USAGE.into() } else { 0 })
    })
}

/// The exit status for an error (a list of configuration problems has
/// its own, printed apart).
pub fn code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<vmdedup_host_agent::config::ConfigError>()
        .is_some()
    {
        CONFIG
    } else if e.downcast_ref::<Unreachable>().is_some() {
        UNREACHABLE
    } else if e.downcast_ref::<Refused>().is_some() {
        REFUSED
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn each_kind_has_its_status_also_under_context() {
        let io = std::io::Error::other("connection refused");
        let e = Err::<(), _>(io)
            .with_context(|| Unreachable("cannot reach the agent".into()))
            .context("vmdedup vms")
            .unwrap_err();
        assert_eq!(code(&e), UNREACHABLE);
        assert_eq!(
            format!("{e:#}"),
            "vmdedup vms: cannot reach the agent: connection refused"
        );
        let e = anyhow::Error::new(Refused("the agent refused".into())).context("vm remove");
        assert_eq!(code(&e), REFUSED);
        assert_eq!(code(&anyhow::anyhow!("disk full")), 1);
        let bad = vmdedup_host_agent::config::AgentConfig::from_toml("pool_size = 3").unwrap_err();
        assert_eq!(code(&anyhow::Error::new(bad).context("--config x")), CONFIG);
    }

    #[test]
    fn the_table_lists_every_status() {
        for c in [0, 1, USAGE, REFUSED, UNREACHABLE, CONFIG] {
            assert!(HELP.contains(&format!("\n  {c:<3} ")), "{c}");
        }
    }
}
