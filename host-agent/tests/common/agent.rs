//! Starting an in-process agent and driving one of its rings as a guest.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vmdedup_host_agent::agent::{Agent, AgentOptions};
use vmdedup_host_agent::config::{AgentConfig, VmConfig};
use vmdedup_host_agent::namespace::NamespaceConfig;
use vmdedup_host_agent::ring::{GuestRing, PollerConfig, SharedMapping};
use vmdedup_protocol::abi::{AnswerStatus, CompletionEntry, SubmissionEntry};

use super::wait_for;

/// VM `name` of trust domain `domain`, on its ring only (no guest socket).
pub fn vm(name: &str, domain: &str) -> VmConfig {
    VmConfig {
        name: name.into(),
        domain: domain.into(),
        guest_socket: None,
        cid: None,
        max_held: None,
    }
}

/// A config with the pool, control socket and rings in `dir`, one loader
/// thread, and these namespaces and VMs; the rest default.
pub fn agent_config(
    dir: &Path,
    pool_size: u64,
    namespaces: Vec<NamespaceConfig>,
    vms: Vec<VmConfig>,
) -> AgentConfig {
    AgentConfig {
        pool: dir.join("pool"),
        pool_size,
        workers: 1,
        control_socket: dir.join("control.sock"),
        ring_dir: dir.to_path_buf(),
        namespaces,
        vms,
        ..AgentConfig::default()
    }
}

/// Starts an agent on `config` with 64 KiB rings and one fast-parking poller.
pub fn start_agent(config: AgentConfig, generation: u64) -> Agent {
    Agent::start(
        config,
        AgentOptions {
            ring_size: 64 << 10,
            pollers: PollerConfig {
                threads: 1,
                park_timeout: Some(Duration::from_millis(5)),
                ..PollerConfig::default()
            },
            generation,
        },
    )
    .unwrap()
}

/// A fake guest on an agent's ring file: numbers its requests, keeps its events.
pub struct Guest {
    /// The guest end of the ring.
    pub ring: GuestRing,
    /// The last request id used.
    pub req: u64,
    /// Every event reaped so far, as (kind, notice, file map id).
    pub events: Vec<(u16, u32, u64)>,
}

impl Guest {
    /// Attaches to the ring file at `path`, without a doorbell.
    pub fn attach(path: &Path) -> Guest {
        Guest {
            ring: GuestRing::attach(Arc::new(SharedMapping::open(path).unwrap()), None).unwrap(),
            req: 0,
            events: Vec::new(),
        }
    }

    /// Waits for the answer to request `want`.
    pub fn answer(&mut self, want: u64) -> CompletionEntry {
        wait_for("an answer", || {
            let mut got = None;
            self.ring.reap(|c| {
                if c.request_id == want {
                    got = Some(c);
                }
            });
            got
        })
    }

    /// One hint for `rel` of namespace `ns` (host copy `file`) asking for
    /// `pages` pages, answered.
    pub fn ask(&mut self, ns: u32, rel: &str, file: &Path, pages: u32) -> CompletionEntry {
        let md = std::fs::metadata(file).unwrap();
        self.req += 1;
        let e = SubmissionEntry {
            request_id: self.req,
            namespace_id: ns,
            file_size: md.size(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            page_count: pages,
            ..Default::default()
        };
        self.ring.stage(e, rel.as_bytes()).unwrap();
        self.ring.publish();
        self.answer(self.req)
    }

    /// Hints (as `ask`) until the answer is a hit.
    pub fn hit(&mut self, ns: u32, rel: &str, file: &Path, pages: u32) -> CompletionEntry {
        wait_for("a hit", || {
            let c = self.ask(ns, rel, file, pages);
            (c.status == AnswerStatus::Hit as u16).then_some(c)
        })
    }

    /// Sends map operations and returns the answer to the last one.
    pub fn map_ops(&mut self, ops: &[(u16, u64)]) -> CompletionEntry {
        for &(op, id) in ops {
            self.req += 1;
            self.ring.stage_map_op(self.req, op, id).unwrap();
        }
        self.ring.publish();
        self.answer(self.req)
    }

    /// Waits for an event matching `f` (keeping every event seen).
    pub fn event(&mut self, what: &str, f: impl Fn(&(u16, u32, u64)) -> bool) -> (u16, u32, u64) {
        wait_for(what, || {
            self.ring
                .reap_events(|e| self.events.push((e.kind, e.notice, e.file_map_id)));
            self.events.iter().copied().find(|e| f(e))
        })
    }
}
