//! `budgetctl`: see `coordinator::budgetctl`.

fn main() -> std::process::ExitCode {
    coordinator::budgetctl::main()
}
