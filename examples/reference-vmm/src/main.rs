//! vmkit's reference VMM: composes the vmkit crates into a VMM that boots PVH firmware and
//! kernels on KVM. It holds no device or CPU logic of its own: the CLI, the composition and the
//! VM's lifecycle.
//!
//! Exit statuses are listed in [`exit_code`].

mod boot;
mod cli;
mod devices;
mod disks;
mod exit_code;
mod files;
mod guests;
mod lifecycle;
mod logger;
mod recording;
mod replay;
mod serial_output;
mod stats;
mod stderr;
mod terminal;
mod vm;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // Help and version go to stdout and are not errors.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line naming the problem; clap's usage block would follow otherwise.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("reference-vmm: {first} (see --help)");
            return ExitCode::from(exit_code::VMM_ERROR);
        }
    };
    // A panic on any thread is one line naming the thread and a status of its own.
    lifecycle::install_panic_hook();
    let run = || match &cli.replay {
        Some(path) => {
            logger::init(cli.verbose, cli.log_file.as_deref(), process_start)?;
            replay::run(path)
        }
        None => vm::run(&cli, process_start),
    };
    match std::panic::catch_unwind(run) {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(e)) => {
            stderr::line(format_args!("{e:#}"));
            ExitCode::from(exit_code::VMM_ERROR)
        }
        Err(payload) => {
            terminal::restore();
            let panic = lifecycle::ThreadPanic::caught("main", payload.as_ref());
            stderr::line(format_args!("{panic}; VM stopped"));
            ExitCode::from(exit_code::VMM_PANIC)
        }
    }
}
