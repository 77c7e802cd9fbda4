//! `pgclone`: see the library's documentation.

fn main() -> std::process::ExitCode {
    pgclone::main()
}
