//! `ringnode`: the leasering demo program.
//!
//! * `ringnode demo` — N members in this process on a throwaway PostgreSQL
//!   (or `--database-url`), with a live terminal dashboard; `--plain` prints
//!   one line per event instead, for scripts and CI (commands then come on
//!   stdin, one a line, when it is not a terminal). `--zones N` spreads the
//!   members over N zones (balanced placement) and shows each zone's share.
//! * `ringnode node` — one member in this process against a shared database,
//!   one per terminal, with a live view of the ring from its eyes
//!   (`--zone` and `--capacity` with `--placement balanced`).
//!
//! * `ringnode status` — a ring read straight from its database: members,
//!   partitions waiting for a claim, epoch (`--json` for scripts).
//!
//! Errors are one line on stderr and a non-zero exit (2 for bad flags, 1
//! for everything else; `status` adds 3 for a ring not found and 4 for a
//! database unreachable), never a panic.

mod band;
mod checker;
mod cli;
mod cluster;
mod demo;
mod http;
mod journal;
mod member_config;
mod node_cmd;
mod signals;
mod status_cmd;
mod ui;
mod util;
mod work;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, DemoArgs};

fn main() -> ExitCode {
    ui::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
                _ => {
                    eprintln!(
                        "ringnode: {} (see `ringnode --help`)",
                        cli::one_line_clap(&e)
                    );
                    return ExitCode::from(2);
                }
            }
        }
    };
    if let Err(e) = cli.check() {
        eprintln!("ringnode: {e} (see `ringnode --help`)");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Some(Command::Demo(args)) => demo::run(args),
        Some(Command::Node(args)) => node_cmd::run(args),
        Some(Command::Status(args)) => status_cmd::run(args),
        Some(Command::Cordon(args)) => status_cmd::cordon(args, true),
        Some(Command::Uncordon(args)) => status_cmd::cordon(args, false),
        Some(Command::Pin(args)) => status_cmd::pin(args, true),
        Some(Command::Unpin(args)) => status_cmd::pin(args, false),
        None => demo::run(DemoArgs::default()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ringnode: {e}");
            ExitCode::from(1)
        }
    }
}
