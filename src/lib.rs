//! pgclone: turn an empty directory into a ready-to-start physical standby of a live PostgreSQL primary.
//!
//! Two programs share this library: `pgclone` (`main`) and `pgclone-agent` (`agent_main`), the primary's side
//! of the native transport, which pgclone brings to the primary host for a run. The agent's code never touches
//! libpq, so its binary links nothing but glibc and runs on any host of the same architecture with glibc 2.34+.
//!
//! `main` only dispatches: flags (`cli`) are resolved once into a `clone::CloneConfig`, and `clone::run` carries
//! out the phases. Dependencies point one way: cli → clone (orchestration and its phases) → pg, transfer,
//! transport, replica, manifest → sys. Error policy: see `error`.

mod cli;
mod clone;
mod error;
mod manifest;
mod patroni;
mod pg;
mod progress;
mod replica;
mod sys;
mod transfer;
mod transport;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::sys::cancel::Cancel;

/// `pgclone`.
pub fn main() -> ExitCode {
    let mut args = match cli::Args::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(&e, std::env::args_os()),
    };
    if let Some(cli::Command::Patroni { args: given }) = &args.command {
        // Patroni passes --key=value only: a bare --help (or -?) is a person asking.
        if given.iter().any(|a| a == "--help" || a == "-?") {
            return print(|out| out.write_all(cli::patroni_help().as_bytes()));
        }
        let flags: Vec<(String, bool)> = cli::Args::command()
            .get_arguments()
            .filter_map(|a| Some((a.get_long()?.to_string(), a.get_action().takes_values())))
            .collect();
        let (argv, warnings) = match patroni::translate(given, &flags) {
            Ok(t) => t,
            // A method's run is always --json (see patroni::translate).
            Err(e) => return fail(&format!("patroni: {e}"), clone::Outcome::Usage, true),
        };
        warnings.iter().for_each(|w| eprintln!("pgclone: patroni: {w}"));
        args = match cli::Args::try_parse_from(&argv) {
            Ok(a) => a,
            Err(e) => return usage_error(&e, argv),
        };
    }
    let level = match (args.debug, args.verbose, args.quiet) {
        (true, _, _) => "pgclone=trace",
        (false, true, _) => "pgclone=debug",
        (false, false, true) => "pgclone=warn",
        (false, false, false) => "pgclone=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PGCLONE_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    match &args.command {
        Some(cli::Command::Verify { dir }) => return verify(dir),
        Some(cli::Command::Agent { pgdata }) => return agent(pgdata),
        Some(cli::Command::ConnectUnix { socket }) => return connect_unix(socket),
        Some(cli::Command::Man) => return print(cli::man),
        Some(cli::Command::Completions { shell }) => {
            return print(|out| {
                clap_complete::generate(*shell, &mut cli::Args::command(), "pgclone", out);
                Ok(())
            })
        }
        // Patroni's arguments were made pgclone's own flags above: a clone.
        Some(cli::Command::Patroni { .. }) | None => {}
    }
    let cancel = Cancel::default();
    if let Err(e) = watch_signals(cancel.clone()) {
        eprintln!("pgclone: error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let config = clone::CloneConfig::resolve(&args, &clone::Env::from_process())
        .map_err(clone::CloneError::from)
        .and_then(|config| Ok(config.ask_password(args.password, &cancel)?));
    let result = match config {
        Ok(config) if args.check => clone::check(&config, &cancel).map(|report| {
            eprintln!("pgclone: {report}");
            format!(
                "{{\"ok\":true,\"check\":true,\"files\":{},\"bytes\":{},\"postgres_clear_text\":{}}}",
                report.files,
                report.bytes,
                manifest::json::names(&report.clear_text)
            )
        }),
        Ok(config) => clone::run(&config, &cancel).map(|summary| {
            // The details first, the one line a DBA reads at a glance last.
            summary.details().iter().for_each(|d| tracing::info!("{d}"));
            if !args.quiet {
                eprintln!("pgclone: {summary}");
            }
            summary.json()
        }),
        Err(e) => Err(e),
    };
    match result {
        Ok(json) => {
            if args.json {
                println!("{json}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), e.outcome(), args.json),
    }
}

/// A command line clap refused: one `pgclone: error:` line like every other failure (help and --version, which
/// clap reports the same way, print as clap prints them), and with --json the object every failure gives.
/// `argv`: the command line, where --json is looked for since the flags could not be parsed.
fn usage_error<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString>>(e: &clap::Error, argv: I) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let json = argv.into_iter().map(Into::into).skip(1).take_while(|a| a != "--").any(|a| a == "--json");
    fail(&cli::error_line(e), clone::Outcome::Usage, json)
}

/// Every failure's ending: the one line `pgclone: error: ...` on stderr, with --json the object scripts read on
/// stdout, and the exit status of its outcome.
fn fail(error: &str, outcome: clone::Outcome, json: bool) -> ExitCode {
    eprintln!("pgclone: error: {error}");
    if json {
        println!(
            "{{\"ok\":false,\"class\":\"{}\",\"exit_code\":{},\"error\":{}}}",
            outcome.name(),
            outcome.exit_code(),
            manifest::json::string(error)
        );
    }
    ExitCode::from(outcome.exit_code())
}

/// Writes what `write` makes to stdout: the man page or completions.
fn print(write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgclone: error: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pgclone-agent agent --pgdata DIR`: the same command line as `pgclone agent`, so that either binary can be
/// what runs on the primary.
pub fn agent_main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match &args[..] {
        [cmd, flag, dir] if cmd == "agent" && flag == "--pgdata" => agent(std::path::Path::new(dir)),
        [flag] if flag == "--version" => {
            println!("pgclone-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: pgclone-agent agent --pgdata DIR (started by pgclone over ssh; see docs/PROTOCOL.md)");
            ExitCode::from(2)
        }
    }
}

fn agent(pgdata: &std::path::Path) -> ExitCode {
    match transport::agent::serve(pgdata, std::io::stdin(), std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgclone agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect_unix(socket: &std::path::Path) -> ExitCode {
    match transport::rsync::connect_unix(socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgclone connect-unix: {}: {e}", socket.display());
            ExitCode::FAILURE
        }
    }
}

fn verify(dir: &std::path::Path) -> ExitCode {
    match manifest::verify::verify(dir) {
        Ok(r) if r.problems.is_empty() => {
            eprintln!(
                "pgclone: {} is consistent with its backup_manifest: {} files, {}, {} WAL segments",
                dir.display(),
                r.files,
                progress::bytes(r.bytes),
                r.wal_segments
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            for p in &r.problems {
                eprintln!("pgclone: {p}");
            }
            eprintln!(
                "pgclone: error: {} does not match its backup_manifest ({} problems)",
                dir.display(),
                r.problems.len()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pgclone: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first SIGINT/SIGTERM/SIGHUP cancels the clone, which then unwinds and cleans up the primary
/// (backup session closed, slot gone, rsync daemon ended). A second one exits at once: the kernel still
/// kills our children (PDEATHSIG) and closes our connections, which ends everything on the primary too.
fn watch_signals(cancel: Cancel) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            if cancel.is_cancelled() {
                std::process::exit(128 + sig);
            }
            let name = match sig {
                SIGINT => "SIGINT",
                SIGTERM => "SIGTERM",
                _ => "SIGHUP",
            };
            cancel.cancel(format!("interrupted by {name}"));
        }
    })?;
    Ok(())
}
