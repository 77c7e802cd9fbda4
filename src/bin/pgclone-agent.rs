//! `pgclone-agent`: the primary's side of the native transport, as a binary of its own that needs no
//! PostgreSQL client library (see the library's documentation).

fn main() -> std::process::ExitCode {
    pgclone::agent_main()
}
