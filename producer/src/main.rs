//! `genq`: the command line for producers and users — submit jobs, read results, and run the
//! whole pipeline in one process with `genq run`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
