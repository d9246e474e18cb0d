//! `vmdedup-bench`: host-side helpers of `scripts/demo` and `scripts/bench`.
//!
//! - `demo-monitor`: the demo's live table and summary;
//! - `sample`: one line of JSON per second with the host memory the guests
//!   use, KSM's and the agent's counters and their CPU time;
//! - `report`: turns the samples of every configuration into
//!   `report.md`, `report.json` and `memory.png`;
//! - `tree-pages`: a tree's files, pages and unique pages, as the agent's
//!   page store counts them (the sharing selftest checks the agent with it);
//! - `json-get`: values out of a JSON document, for the host-side selftest
//!   checks of `vmdedup status --json`.
//!
//! A benchmark, not a test: nothing here asserts on time.

mod agent;
mod demo;
mod json_get;
mod plot;
mod procfs;
mod report;
mod sample;
mod tree_pages;

use clap::{Parser, Subcommand};

/// Host-side helpers of scripts/demo and scripts/bench.
#[derive(Parser)]
#[command(name = "vmdedup-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The live table of scripts/demo (refreshes every second).
    DemoMonitor(demo::Args),
    /// Compare the host memory of two demo runs (`demo-monitor --result`
    /// files): the same boot without vmdedup, then with it.
    DemoCompare(demo::CompareArgs),
    /// Sample host memory, KSM and agent counters every second (JSON lines).
    Sample(sample::Args),
    /// Write report.md, report.json and memory.png from a bench run.
    Report(report::Args),
    /// Count the 4 KiB pages (and the unique ones) of the regular files
    /// under a tree, as the agent's page store does; prints JSON.
    TreePages(tree_pages::Args),
    /// Print the values JSON pointers (with `*` for every element) reach in
    /// the JSON document on stdin, one a line.
    JsonGet(json_get::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::DemoMonitor(a) => demo::run(a),
        Command::DemoCompare(a) => demo::compare(a),
        Command::Sample(a) => sample::run(a),
        Command::Report(a) => report::run(a),
        Command::TreePages(a) => tree_pages::run(a),
        Command::JsonGet(a) => json_get::run(a),
    }
}
